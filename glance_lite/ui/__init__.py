"""The browser UI: `python -m glance_lite.ui [--port N]` serves a Gradio page on localhost (`pip install -e ".[ui]"`).

Glue over the public API, one responsibility per module:

    library.py   every call into glance_lite (planner, profile choice, load, train, PSNR, error texts)
    request.py   the page's generation fields -> checked load/generate arguments and the PNG settings
    worker.py    the ONE thread that does model work, its queue and the jobs' progress and cancellation
    models.py    the loaded models (one Glance per model, profile, LoRA files and compat), reused across requests
    training.py  a training run in a child process: live loss, stop, resume, the trained runs on disk
    views.py     what the page shows: plan table, progress bars, stage tables, loaded models
    app.py       the Gradio Blocks: tabs, fields and the handlers that connect them
    __main__.py  the command line

Only this package imports gradio; the core package never needs it.
"""
