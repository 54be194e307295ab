"""Evaluation: denoisers scored side by side on held-out audio (`speech-enhance evaluate`).

    run        run_evaluation: the whole evaluation, from its options to the report
    options    EvaluateOptions: every option of an evaluation (default, help, flag)
    items      evaluation items (paired files or seeded mixtures) and their screening
    systems    the systems compared (models, classical baselines, SNMF, peers, the oracle)
    scoring    scoring every system on every item, and the means per SNR bin and noise class
    report     results.json, results.md and plots
    plots      the report's PNGs
    metrics    SI-SDR, SI-SDR improvement, PESQ, STOI
    baselines  spectral subtraction, Wiener filter, spectral gating, oracle, the reference's recipe
    snmf       the sparse-NMF baseline (SparseNMF), with nmf (the cost and its updates) and
               snmf_data (training frames from audio folders or a dataset directory)
    peers      learned denoisers a user could pick instead (DeepFilterNet3, RNNoise; DTLN, NSNet2 in onnx_time_peers)
    cli        `speech-enhance evaluate`

docs/evaluation.md describes the command and the library.
"""
