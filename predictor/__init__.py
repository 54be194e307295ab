"""Batch denoising of audio files with a trained model directory, and evaluation against baselines.

    enhance       Enhancer (any length, batched across files); re-exports enhance_files and friends
    overlap_add   the overlap-add algorithm: windows, crossfade, streamed analysis and synthesis
    workers       the threads around the model (prefetching, file read-ahead)
    folders       enhance_files: inputs, output paths, skipping, failures.jsonl
    audio_io      finding, reading, resampling and atomically writing wav/flac/ogg
    metrics       SI-SDR, SI-SDR improvement, PESQ, STOI
    baselines     spectral subtraction, Wiener filter, spectral gating, oracle, the reference's recipe
    evaluate      run_evaluation; re-exports the steps below
    eval_items    evaluation items (paired files or seeded mixtures) and their screening
    eval_systems  the systems compared
    eval_scoring  scoring and aggregation
    eval_report   results.json, results.md and plots
    plots         the evaluation's PNGs
    cli           `speech-enhance predict` and `speech-enhance evaluate`

docs/predict.md and docs/evaluation.md describe both commands.
"""
