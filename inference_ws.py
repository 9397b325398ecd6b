"""The plan's WebSocket client: `python inference_ws.py --video_path ... --output_dir ...`.

`edensplit interpolate` over WebSocket with all its options; a --transport other than ws is refused.
"""

import sys

from edensplit.client.entry import run_with_transport

if __name__ == "__main__":
    sys.exit(run_with_transport("ws", sys.argv[1:], "inference_ws.py"))
