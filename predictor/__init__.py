"""Batch denoising of audio files with a trained model directory, and evaluation against baselines.

    enhance       Enhancer (any length, batched across files); re-exports enhance_files and friends
    overlap_add   the overlap-add algorithm: windows, crossfade, streamed analysis and synthesis
    workers       the threads around the model (prefetching, file read-ahead)
    folders       enhance_files: inputs, output paths, skipping, failures.jsonl
    audio_io      finding, reading, resampling and atomically writing wav/flac/ogg
    evaluation    `speech-enhance evaluate`: scoring models against baselines, SNMF and peers
    cli           `speech-enhance predict` (and the registration of `evaluate`)

docs/predict.md and docs/evaluation.md describe both commands.
"""
