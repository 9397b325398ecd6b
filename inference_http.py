"""The plan's HTTP client: `python inference_http.py --video_path ... --output_dir ...`.

`edensplit interpolate` over HTTP with all its options; a --transport other than http is refused.
"""

import sys

from edensplit.client.entry import run_with_transport

if __name__ == "__main__":
    sys.exit(run_with_transport("http", sys.argv[1:], "inference_http.py"))
