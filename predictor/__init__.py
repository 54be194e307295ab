"""Batch denoising of audio files with a trained model directory, and evaluation against baselines.

    enhance    Enhancer (any length, overlap-add, batched across files) and enhance_files (folders)
    audio_io   finding, reading, resampling and atomically writing wav/flac/ogg
    metrics    SI-SDR, SI-SDR improvement, PESQ, STOI
    baselines  spectral subtraction, Wiener filter, spectral gating, oracle, the reference's recipe
    evaluate   evaluation items (paired files or seeded mixtures), scoring, reports
    plots      the evaluation's PNGs
    cli        `speech-enhance predict` and `speech-enhance evaluate`

docs/predict.md and docs/evaluation.md describe both commands.
"""
