"""The web page and the HTTP API over the segmentation pipeline (`vitsam serve`).

The defaults below are read by the command's parser too, so they live here, importable
without the serve extra (FastAPI, Gradio).
"""

HOST = "127.0.0.1"  # loopback: reachable from this machine only, unless told otherwise
PORT = 7860  # Gradio's usual port
LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_UPLOAD_MB = 20.0  # the largest request body, megabytes (2**20 bytes)
