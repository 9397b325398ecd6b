"""What the HTTP and WebSocket clients both send and receive: request bodies and decoded answers.

The JSON shapes are the user's (base64 images and blobs); the binary ones are the frames container
and the enc_out blob with the options flat (HTTP query parameters, or the binary message header).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edensplit.wire import b64decode_field, b64encode, decode_image, encode_png, read_blob_header, unpack_frames


@dataclass(frozen=True)
class EncodedBlob:
    """The cloud's answer: an enc_out blob (raw bytes, or the base64 text as received, passed on as is)."""

    blob: bytes | None
    blob_b64: str | None
    grid: tuple[int, int]
    difference: float | None  # a pair's raw mean cosine similarity; None for one frame
    size: int  # bytes of the blob

    @property
    def raw(self) -> bytes:
        return self.blob if self.blob is not None else b64decode_field(self.blob_b64 or "", "enc_out")

    @property
    def b64(self) -> str:
        return self.blob_b64 if self.blob_b64 is not None else b64encode(self.raw)

    @classmethod
    def from_bytes(cls, blob: bytes) -> EncodedBlob:
        header = read_blob_header(blob)
        ph, pw = (int(v) for v in header["grid"].split(","))
        diff = header.get("difference")
        return cls(blob, None, (ph, pw), None if diff is None else float(diff), len(blob))

    @classmethod
    def from_json(cls, enc_out: str, metadata: dict[str, Any]) -> EncodedBlob:
        return cls(None, enc_out, (metadata["ph"], metadata["pw"]), metadata.get("difference"),
                   metadata["enc_out_size"])


@dataclass(frozen=True)
class Sampling:
    """The sampling options a client sends with every interpolation."""

    num_steps: int = 2
    method: str = "euler"

    def flat(self, seed: int, **extra: Any) -> dict[str, Any]:
        """For HTTP query parameters and binary message headers."""
        return {"seed": seed, "num_steps": self.num_steps, "method": self.method,
                **{k: v for k, v in extra.items() if v is not None}}

    def json(self, seed: int, **extra: Any) -> dict[str, Any]:
        """For the user's JSON shape."""
        return {"seed": seed, "sampling_config": {"num_steps": self.num_steps, "method": self.method},
                **{k: v for k, v in extra.items() if v is not None}}


def images_json(**frames: np.ndarray) -> dict[str, str]:
    """{name: base64 PNG} for the JSON API."""
    return {name: b64encode(encode_png(frame)) for name, frame in frames.items()}


def frame_from_json(generated_frame: str) -> np.ndarray:
    return decode_image(b64decode_field(generated_frame, "generated_frame"), "generated_frame")


def frame_from_container(data: bytes) -> np.ndarray:
    return unpack_frames(data, ("frame",))[0]["frame"]
