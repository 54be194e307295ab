"""The selection rule (docs/selection.md): paired-bootstrap intervals, veto, composite, pick and the command."""

import json
import math
import time

import numpy as np
import pytest
import soundfile

import speech_enhance
from beam_pipelines.synthetic import chirp as synth_voice
from beam_pipelines.synthetic import noise as synth_noise
from predictor.evaluation.selection import (SelectionRule, compare, composite, selection_domains, paired_bootstrap,
                                            select)
from predictor.evaluation.selection_report import write_selection

REFERENCE = {"pesq": 2.0, "stoi": 0.80, "si_sdr": 8.0}
CORPORA = ("read", "spontaneous")
GROUPS = ("street", "office")


def make_results(num_items, shifts, seed=0, spread=0.02):
    """An `evaluate`-shaped results dict: the reference "ref" near REFERENCE and each system of `shifts`
    ({name: f(record) -> (dPESQ, dSTOI, dSI-SDR)}) offset from it per item, with noise of `spread`
    (in units of 0.05 PESQ, 0.01 STOI, 0.3 dB) around the offset."""
    rng = np.random.default_rng(seed)
    units = np.array([0.05, 0.01, 0.3])
    items = []
    for i in range(num_items):
        record = {"id": f"item{i:04d}", "snr_db": 0.0, "snr_bin": float([-5, 0, 5][i % 3]),
                  "noise_class": "babble" if i % 10 == 9 else "traffic", "seconds": 2.0, "source": {},
                  "voice_corpus": CORPORA[i % 2], "noise_group": GROUPS[(i // 2) % 2]}
        base = np.array(list(REFERENCE.values())) + rng.normal(0, 1, 3) * units * 5
        scores = {"ref": dict(zip(REFERENCE, base.tolist()))}
        for name, shift in shifts.items():
            value = base + np.array(shift(record)) + rng.normal(0, spread, 3) * units * 10
            scores[name] = dict(zip(REFERENCE, value.tolist()))
        for s in scores.values():
            s["si_sdri"] = s["si_sdr"] - 3.0
        record["scores"] = scores
        items.append(record)
    return {"sample_rate": 16000, "systems": [{"name": n} for n in ["ref", *shifts]], "items": items}


def write_wav(path, data, rate):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), data, rate)


def test_a_candidate_that_wins_everywhere_is_picked():
    results = make_results(120, {"better": lambda r: (0.1, 0.02, 0.6)})
    record = select(results, "ref", ["better"])
    better = record["candidates"]["better"]
    assert record["pick"] == "better" and not better["veto"]
    # Two units of each metric in every corpus and noise domain: a composite of about 2.
    assert better["composite"] == pytest.approx(2.0, abs=0.3)
    overall = better["domains"]["overall"]
    pesq = overall["pesq"]
    assert pesq["n"] == 120 and 0.09 < pesq["low"] < pesq["mean"] < pesq["high"] < 0.11
    assert set(better["domains"]) == {"overall", "corpus:read", "corpus:spontaneous", "noise:street",
                                      "noise:office", "noise:talkers", "snr:-5", "snr:0", "snr:5"}
    assert record["rule"]["units"] == {"pesq": 0.05, "stoi": 0.01, "si_sdr": 0.3}


def test_a_clear_loss_in_one_corpus_vetoes_however_it_wins_elsewhere():
    # Wins 0.5 PESQ on read speech, loses 0.1 on spontaneous: +0.2 on average, but out.
    shifts = {"lopsided": lambda r: (0.5 if r["voice_corpus"] == "read" else -0.1, 0.0, 0.0),
              "modest": lambda r: (0.03, 0.002, 0.1)}
    record = select(make_results(120, shifts), "ref", ["lopsided", "modest"])
    lopsided = record["candidates"]["lopsided"]
    assert lopsided["domains"]["overall"]["pesq"]["mean"] > 0.1
    assert lopsided["veto"] and all("PESQ" in reason for reason in lopsided["veto"])
    assert any(reason.startswith("corpus:spontaneous PESQ") and "on 60 items" in reason for reason in lopsided["veto"])
    assert lopsided["composite"] > record["candidates"]["modest"]["composite"] > 0
    assert record["pick"] == "modest" and "1 vetoed: lopsided" in record["why"]


def test_a_loss_in_a_domain_below_twenty_items_vetoes_nothing():
    # The talker items (every tenth: 12 of 120) lose clearly, but 12 items are too few to veto.
    shifts = {"c": lambda r: (-0.3 if r["noise_class"] == "babble" else 0.05, 0.0, 0.0)}
    record = select(make_results(120, shifts, spread=0.0), "ref", ["c"])
    talkers = record["candidates"]["c"]["domains"]["noise:talkers"]["pesq"]
    assert talkers["n"] == 12 and talkers["high"] < 0
    assert not record["candidates"]["c"]["veto"]


def test_the_reference_stays_when_no_candidate_scores_above_zero():
    shifts = {"same": lambda r: (0.0, 0.0, 0.0), "slightly": lambda r: (-0.01, -0.001, -0.02),
              "worse": lambda r: (-0.1, -0.02, -0.5)}
    results = make_results(60, shifts, spread=0.0)
    record = select(results, "ref", ["same", "slightly", "worse"])
    assert record["candidates"]["same"]["composite"] == pytest.approx(0.0, abs=1e-9)
    # A loss within one unit vetoes nothing (it only lowers the composite); one beyond it does.
    assert not record["candidates"]["slightly"]["veto"] and record["candidates"]["slightly"]["composite"] < 0
    assert record["candidates"]["worse"]["veto"]
    assert record["pick"] == "ref" and record["why"].startswith("the best candidate not vetoed, same, has composite")
    record = select(results, "ref", ["worse"])
    assert record["pick"] == "ref" and record["why"].startswith("every candidate is vetoed")


def test_a_tie_goes_to_the_candidate_listed_first():
    results = make_results(40, {"a": lambda r: (0.1, 0.0, 0.0)}, spread=0.0)
    for record in results["items"]:
        record["scores"]["b"] = dict(record["scores"]["a"])
    assert select(results, "ref", ["a", "b"])["pick"] == "a"
    assert select(results, "ref", ["b", "a"])["pick"] == "b"


def test_the_composite_averages_corpus_and_noise_domains_only():
    cell = {"n": 30, "low": 0.0, "high": 1.0}
    domains = {"overall": {m: {**cell, "mean": 100.0} for m in ("pesq", "stoi", "si_sdr")},
               "snr:0": {m: {**cell, "mean": 100.0} for m in ("pesq", "stoi", "si_sdr")},
               "corpus:a": {"pesq": {**cell, "mean": 0.05}, "stoi": {**cell, "mean": 0.02},
                            "si_sdr": {**cell, "mean": 0.9}},
               "noise:b": {"pesq": {**cell, "n": 0, "mean": math.nan}, "stoi": {**cell, "mean": -0.01},
                           "si_sdr": {**cell, "mean": 0.3}}}
    # corpus:a: (1 + 2 + 3) / 3 = 2; noise:b, PESQ not computed: (-1 + 1) / 2 = 0.
    assert composite(domains, SelectionRule()) == pytest.approx(1.0)


def test_the_interval_contains_the_true_difference_and_narrows_with_more_items():
    rng = np.random.default_rng(7)
    true_mean, widths, covered = 0.2, {}, 0
    for n in (50, 800):
        for trial in range(20):
            sample = true_mean + rng.normal(0, 1.0, (n, 1))
            count, mean, low, high = paired_bootstrap(sample, np.random.default_rng(trial), 2000)
            assert count[0] == n and low[0] < mean[0] < high[0]
            covered += low[0] <= true_mean <= high[0]
            widths.setdefault(n, []).append(high[0] - low[0])
    assert covered >= 34, f"a 95 % interval held the true mean in only {covered} of 40 samples"
    # The width shrinks as 1 / sqrt(n): four times narrower for sixteen times the items.
    assert np.mean(widths[800]) == pytest.approx(np.mean(widths[50]) / 4, rel=0.15)
    assert np.mean(widths[50]) == pytest.approx(2 * 1.96 / math.sqrt(50), rel=0.15)


def test_unpaired_items_are_left_out_and_the_draws_do_not_depend_on_item_order():
    results = make_results(80, {"c": lambda r: (0.05, 0.01, 0.3)})
    results["items"][0]["scores"]["c"]["pesq"] = None  # not computed (JSON null)
    results["items"][1]["scores"]["ref"]["stoi"] = float("nan")
    forward = compare(results, "ref", ["c"])["c"]
    assert forward["overall"]["pesq"]["n"] == 79 and forward["overall"]["stoi"]["n"] == 79
    assert forward["overall"]["si_sdr"]["n"] == 80
    shuffled = dict(results, items=results["items"][::-1])
    backward = compare(shuffled, "ref", ["c"])["c"]
    assert set(forward) == set(backward)
    assert forward["corpus:read"]["pesq"]["mean"] == pytest.approx(backward["corpus:read"]["pesq"]["mean"])
    # Same items, same draws, another order of them: the interval moves only a little.
    assert forward["corpus:read"]["pesq"]["low"] == pytest.approx(backward["corpus:read"]["pesq"]["low"], abs=0.01)


def test_records_without_corpus_or_noise_folder_fall_back_to_all_and_the_noise_kind():
    assert selection_domains({"snr_bin": 5.0, "noise_class": "street"}) == ["overall", "corpus:all", "noise:other",
                                                                        "snr:5"]
    talkers = {"snr_bin": None, "noise_class": "babble-restaurant", "voice_corpus": "vctk", "noise_group": "demand"}
    assert selection_domains(talkers) == ["overall", "corpus:vctk", "noise:talkers", "snr:unknown"]


def test_a_thousand_items_and_four_candidates_take_seconds():
    shifts = {f"c{i}": (lambda r, i=i: (0.01 * i, 0.001 * i, 0.05 * i)) for i in range(4)}
    results = make_results(1200, shifts)
    start = time.perf_counter()
    record = select(results, "ref", list(shifts))
    assert time.perf_counter() - start < 5.0
    assert record["pick"] == "c3"


def test_bad_input_is_refused_with_what_is_wrong(tmp_path, capsys):
    results = make_results(10, {"c": lambda r: (0.0, 0.0, 0.0)})
    with pytest.raises(ValueError, match=r"unknown system name\(s\) \['nope'\]; the systems scored on every item "
                                         r"are \['ref', 'c'\]"):
        select(results, "ref", ["nope"])
    with pytest.raises(ValueError, match="at least 2 scored items; the results hold 1"):
        select(dict(results, items=results["items"][:1]), "ref", ["c"])
    with pytest.raises(ValueError, match="other than the reference 'ref'"):
        select(results, "ref", ["ref"])
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"aggregates": {}}))
    assert speech_enhance.main(["select", str(path), "--reference", "ref", "--candidates", "c",
                                "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{path} has no list of \"items\"" in err and "speech-enhance evaluate --output DIR" in err
    path.write_text(json.dumps({"items": [{"id": "a", "snr_bin": 0, "scores": {}}]}))
    assert speech_enhance.main(["select", str(path), "--reference", "ref", "--candidates", "c",
                                "--output", str(tmp_path / "out")]) == 2
    assert "item 0 lacks noise_class" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_record_is_written_and_read_back(tmp_path):
    shifts = {"lopsided": lambda r: (0.5 if r["voice_corpus"] == "read" else -0.1, 0.0, 0.0),
              "modest": lambda r: (0.03, 0.002, 0.1)}
    record = select(make_results(60, shifts), "ref", ["lopsided", "modest"])
    written = write_selection(record, str(tmp_path))
    back = json.loads((tmp_path / "selection.json").read_text())
    assert back["pick"] == "modest" and back["rule"] == SelectionRule().to_dict()
    assert back["candidates"]["lopsided"]["domains"]["corpus:spontaneous"]["pesq"]["high"] < 0
    text = (tmp_path / "selection.md").read_text()
    assert written["markdown"] == str(tmp_path / "selection.md")
    assert "## lopsided" in text and "VETO**" in text and "**modest**: modest has the highest composite" in text


def test_select_command_end_to_end_on_a_real_evaluate_run(tmp_path, capsys):
    """evaluate scores the noisy input and two classical denoisers on mixtures made here; select reads its
    results.json: with the noisy input as reference, a denoiser is picked; the record names the rule."""
    rng = np.random.default_rng(5)
    rate = 8000
    for i in range(3):
        voice = 0.1 * synth_voice(rng, 3 * rate, rate)
        write_wav(tmp_path / "voices" / ("read", "spoken")[i % 2] / f"utt{i}.wav", voice, rate)
    for name, kind in (("street/white.wav", "white"), ("hum/hum.wav", "hum")):
        write_wav(tmp_path / "noises" / name, 0.05 * synth_noise(rng, 3 * rate, rate, kind), rate)
    assert speech_enhance.main([
        "evaluate", "--systems", "noisy", "spectral-subtraction", "wiener", "--voice-dir", str(tmp_path / "voices"),
        "--noise-dir", str(tmp_path / "noises"), "--snrs", "0", "5", "--num-mixtures", "12", "--duration", "1.5",
        "--no-pesq", "--examples", "0", "--output", str(tmp_path / "eval")]) == 0
    capsys.readouterr()
    out = tmp_path / "select"
    assert speech_enhance.main(["select", str(tmp_path / "eval" / "results.json"), "--reference", "noisy",
                                "--candidates", "spectral-subtraction", "wiener", "--output", str(out)]) == 0
    record = json.loads((out / "selection.json").read_text())
    printed = capsys.readouterr().out
    assert record["pick"] in ("spectral-subtraction", "wiener") and f"pick: {record['pick']}" in printed
    assert record["rule"] == SelectionRule().to_dict() and record["num_items"] == 24
    picked = record["candidates"][record["pick"]]
    assert picked["domains"]["overall"]["si_sdr"]["low"] > 0 and picked["domains"]["overall"]["pesq"]["n"] == 0
    items = json.loads((tmp_path / "eval" / "results.json").read_text())["items"]
    corpora = {f"corpus:{it.get('voice_corpus', 'all')}" for it in items}
    groups = {f"noise:{it.get('noise_group', 'other')}" for it in items}
    assert set(picked["domains"]) == {"overall", "snr:0", "snr:5"} | corpora | groups
    assert "## Pick" in (out / "selection.md").read_text()
    assert speech_enhance.main(["select", str(tmp_path / "eval" / "results.json"), "--reference", "ours",
                                "--candidates", "wiener", "--output", str(out)]) == 2
    assert "unknown system name(s) ['ours']; the systems scored on every item are ['noisy', " in capsys.readouterr().err
