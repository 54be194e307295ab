"""Batch denoising of audio files with a trained model directory, and evaluation against baselines.

    enhance         Enhancer (any length, batched across files)
    overlap_add     the overlap-add algorithm: window geometry, crossfade, streamed analysis and synthesis
    workers         the threads around the model (prefetching, file read-ahead)
    folders         enhance_files: a folder of files through an Enhancer, in threads or file processes
    file_stream     one file read into frames and written from them, a block at a time
    output_folder   inputs, output paths, skipping, the write check, failures.jsonl
    file_processes  the file side in worker processes (file_worker: one worker)
    beam_predict    predict --runner (predict_stages: its stages; job_manifest: the files to do)
    audio_io        finding, reading, resampling and atomically writing wav/flac/ogg
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
