"""What every mode writes: Markdown table lines and cells, the environment the figures were made in, JSON."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from edensplit.settings import ModelSettings


def environment(device: str | None = None) -> dict[str, Any]:
    """Where the figures were made."""
    device = device or ModelSettings().device
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "CPU"
    return {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(), "device": device,
            "device_name": name, "torch": torch.__version__, "python": platform.python_version(),
            "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "torch_threads": torch.get_num_threads(),
            "model": "checkpoint " + os.environ["MODEL_PATH"] if os.environ.get("MODEL_PATH") else
            "random weights, " + (f"config {os.environ['EDEN_CONFIG']}" if os.environ.get("EDEN_CONFIG")
                                  else "the released config (full size)")}


def _env_line(env: dict[str, Any]) -> str:
    load = env.get("load_average_1min")
    return (f"{env['cores']} cores ({env['cpu']}), {env['device_name']}, torch {env['torch']}, {env['model']}, "
            f"{env['time']}" + ("" if load is None else f", load average {load:.1f} at the start"))


def write_json(path: Path, document: dict[str, Any]) -> None:
    """A JSON document, indented, NaN refused."""
    path.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")


def publish(text: str, output: Path | None, json_path: Path | None, document: Callable[[], dict[str, Any]],
            echo: bool = True) -> None:
    """A mode's report: printed, written as Markdown to `output` and its figures as JSON to `json_path` when asked
    (the document built only then)."""
    if echo:
        print(text)
    if output:
        output.write_text(text)
    if json_path:
        write_json(json_path, document())


def _mb(x: float | None) -> str:
    return "-" if x is None else f"{x / 1e6:.3f}"


# One column per hop, named by the server that counts it (its /metrics): (Row.hops key, column header).
# Flow A: client→cloud, cloud→client, client→edge, edge→client. Flow B (the edge proxies to the cloud):
# edge→cloud, cloud→edge, client→edge, edge→client.
HOP_COLUMNS = (
    ("cloud_in", "into cloud MB (A: client→cloud, B: edge→cloud)"),
    ("cloud_out", "out of cloud MB (A: cloud→client, B: cloud→edge)"),
    ("edge_in", "into edge MB (client→edge)"),
    ("edge_out", "out of edge MB (edge→client)"),
)


def _table_line(cells: list[str] | tuple[str, ...]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(columns: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table: header, separator, one line per row (each exactly len(columns) cells)."""
    for cells in body:
        assert len(cells) == len(columns), (cells, columns)
    return [_table_line(tuple(columns)), "|" + "---|" * len(columns), *(_table_line(tuple(c)) for c in body)]


def _failure(text: str) -> str:
    """A failure's message as one table cell."""
    return "failed: " + " ".join(text.replace("|", "/").split())[:200]


def _ms(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
