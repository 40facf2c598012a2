"""Metric writers: TensorBoard event files and `metrics.jsonl` in the run directory.

    with MetricWriter(workdir, enabled=jax.process_index() == 0, start_step=0) as w:
      w.write_config(config.to_dict())
      w.write_scalars(100, {'train/loss': 1.9, 'train/top1': 0.31, 'lr': 0.1}, epoch=0.25)
      w.write_image('plots/loss', 100, workdir / 'plots/loss.png')

`metrics.jsonl` holds one JSON object per `write_scalars` call: `step`, `epoch` (if given), `time`
(seconds of wall time since the run started, continued across resumes; the time between sessions
is not counted), then the scalars under their flat keys, which are also the TensorBoard tags.
Every line is flushed as it is written, so a crash loses nothing that was logged.

Event files (`events.out.tfevents.<unix time>.<host>`, one per writer) are written synchronously
with tensorboardX's protobufs, no writer thread. On resume a run repeats the steps after its last
checkpoint (`start_step`): the writer drops their records from `metrics.jsonl` (and a line torn by
a crash), and starts its event file with a session-log START at the first repeated step (what
TensorBoard's `purge_step` does), so TensorBoard hides the superseded events. Non-finite values
are written as Python's json writes them (`NaN`, `Infinity`).

Nothing here touches JAX; only the writer classes have side effects.
"""

import importlib
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from resnet_jax.config_base import flatten

METRICS_FILE = 'metrics.jsonl'
_RESERVED = ('step', 'epoch', 'time')
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
  """The records of `workdir/metrics.jsonl`, in order.

  Raises FileNotFoundError naming the directory if it does not exist or holds no metrics.jsonl,
  and ValueError naming file and line for a malformed line (a torn last line, as a crash while
  writing leaves it, is skipped).
  """
  workdir = Path(workdir)
  path = workdir / METRICS_FILE
  if not workdir.is_dir():
    raise FileNotFoundError(f'{workdir}: no such directory')
  if not path.is_file():
    raise FileNotFoundError(f'{workdir} is not a run directory: it has no {METRICS_FILE}')
  return [record for _, record in _read_lines(path, path.read_text())]


def _read_lines(path: Path, text: str, *,
                strict: bool = True) -> list[tuple[str, dict[str, Any]]]:
  """(line, record) for each record of `text`, the content of the metrics.jsonl at `path`; a torn
  last line is left out, and other malformed lines raise (`strict`) or are left out with a
  warning."""
  lines = text.splitlines()
  out = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      if not isinstance(record, dict) or 'step' not in record:
        raise ValueError('not an object with a "step"')
    except ValueError as e:
      if number == len(lines):
        break   # torn last line of a crashed write
      message = f'{path}:{number}: malformed metrics line ({e})'
      if strict:
        raise ValueError(message) from None
      logging.warning('%s: dropped', message)
      continue
    out.append((line, record))
  return out


def _keep_until(path: Path, step: int) -> list[dict[str, Any]]:
  """Rewrites metrics.jsonl with the records up to `step` of its latest history only (a record
  whose step goes back supersedes the earlier ones from there on; malformed lines go); returns
  all the records it had."""
  text = path.read_text()
  lines = _read_lines(path, text, strict=False)
  history: list[tuple[str, dict[str, Any]]] = []
  for line, record in lines:
    history = [(l, r) for l, r in history if r['step'] <= record['step']]
    history.append((line, record))
  kept = ''.join(line + '\n' for line, record in history if record['step'] <= step)
  if kept != text:
    partial = path.with_name(path.name + '.tmp')
    partial.write_text(kept)
    os.replace(partial, path)
  return [record for _, record in lines]


def hparam_value(value: Any) -> bool | int | float | str | None:
  """A config value as the TensorBoard HParams plugin takes it (sequences become strings)."""
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  if isinstance(value, (np.integer, np.floating, np.bool_)):
    return value.item()
  return str(value)


def png_header(data: bytes) -> tuple[int, int, int]:
  """(height, width, channels) of PNG-encoded bytes, from the IHDR chunk."""
  if not data.startswith(_PNG_SIGNATURE) or len(data) < 26:
    raise ValueError('not a PNG image')
  width, height = int.from_bytes(data[16:20], 'big'), int.from_bytes(data[20:24], 'big')
  channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(data[25], 3)   # by PNG colour type
  return height, width, channels


def _json_default(obj: Any) -> Any:
  return obj.item() if isinstance(obj, np.generic) else str(obj)


def tensorboardx(module: str):
  """`tensorboardX.<module>`, imported without torch.

  tensorboardX's package imports torch wherever it is installed, only to accept torch tensors
  (which nothing here passes): seconds of start-up on GPU hosts that have torch. Unless torch is
  loaded already, the first import runs with `import torch` failing, as if it were absent.
  """
  if 'tensorboardX' not in sys.modules and 'torch' not in sys.modules:
    sys.modules['torch'] = None   # makes `import torch` raise ImportError
    try:
      importlib.import_module('tensorboardX')
    finally:
      del sys.modules['torch']
  return importlib.import_module(f'tensorboardX.{module}')


def tf_record(data: bytes) -> bytes:
  """One TFRecord: length, its masked CRC-32C, the data, its masked CRC-32C."""
  masked_crc32c = tensorboardx('record_writer').masked_crc32c
  header = struct.pack('<Q', len(data))
  return (header + struct.pack('<I', masked_crc32c(header)) + data
          + struct.pack('<I', masked_crc32c(data)))


class MetricWriter:
  """Writes scalars to TensorBoard and metrics.jsonl; a disabled writer does nothing at all.

  Enable it on process 0 only, with the step the run starts from (`start_step`: the restored
  checkpoint's). Events are written synchronously (no writer thread) and flushed with each call.
  """

  def __init__(self, workdir: str | Path, *, enabled: bool, start_step: int):
    self.workdir = Path(workdir)
    self.enabled = enabled
    self._events = None
    self._file = None
    if not enabled:
      return
    self.workdir.mkdir(parents=True, exist_ok=True)
    path = self.workdir / METRICS_FILE
    earlier = _keep_until(path, start_step) if path.is_file() else []
    # The clock goes on from the last record, superseded ones included (their time was spent).
    self._time_offset = max((float(r.get('time', 0.0)) for r in earlier), default=0.0)
    # A run that starts over from step 0 writes its config (step 0) again: purge from there.
    self._purge_step = (start_step + 1 if start_step else 0) if earlier else None
    self._t0 = time.monotonic()
    self._file = open(path, 'a', encoding='utf-8')

  def _write_event(self, step: int | None, summary=None) -> None:
    """Appends an event with `summary` (opening the event file on first use) and flushes it."""
    event_pb2 = tensorboardx('proto.event_pb2')
    Event, SessionLog = event_pb2.Event, event_pb2.SessionLog
    if self._events is None:
      name = f'events.out.tfevents.{time.time():.6f}.{socket.gethostname()}'
      self._events = open(self.workdir / name, 'ab')
      self._events.write(tf_record(
          Event(wall_time=time.time(), file_version='brain.Event:2').SerializeToString()))
      if self._purge_step is not None:
        # A resumed run repeats the steps from here on: TensorBoard hides the older events there.
        self._events.write(tf_record(Event(
            wall_time=time.time(), step=self._purge_step,
            session_log=SessionLog(status=SessionLog.START)).SerializeToString()))
    if summary is not None:
      event = Event(wall_time=time.time(), step=step or 0, summary=summary)
      self._events.write(tf_record(event.SerializeToString()))
    self._events.flush()

  def write_scalars(self, step: int, scalars: Mapping[str, float], **extra: Any) -> None:
    """One metrics.jsonl line (step, epoch/extra if given, time, scalars) and TB scalars."""
    if not self.enabled:
      return
    Summary = tensorboardx('proto.summary_pb2').Summary
    clash = [k for k in scalars if k in _RESERVED]
    if clash:
      raise ValueError(f'scalar names {clash} are reserved for the record itself')
    step = int(step)
    values = {k: float(v) for k, v in scalars.items()}
    elapsed = self._time_offset + time.monotonic() - self._t0
    record = {'step': step, **extra, 'time': round(elapsed, 3), **values}
    self._file.write(json.dumps(record, default=_json_default) + '\n')
    self._file.flush()
    self._write_event(step, Summary(value=[Summary.Value(tag=k, simple_value=v)
                                           for k, v in values.items()]))

  def write_config(self, config: Mapping[str, Any]) -> None:
    """The config as a text summary (JSON) and as hyperparameters (flattened dotted keys)."""
    if not self.enabled:
      return
    summary = tensorboardx('summary')
    hparams, text = summary.hparams, summary.text
    body = json.dumps(config, indent=2, sort_keys=True, default=str)
    self._write_event(None, text('config', '    ' + body.replace('\n', '\n    ')))  # code block
    flat = {k: hparam_value(v) for k, v in flatten(config).items()}
    metrics = {k: 0.0 for k in ('eval/top1', 'eval/top5', 'eval/loss', 'train/loss')}
    experiment, session_start, _ = hparams(flat, metrics)
    self._write_event(None, experiment)
    self._write_event(None, session_start)

  def write_image(self, tag: str, step: int, image: str | Path | np.ndarray) -> None:
    """A PNG file (logged as is) or an array [H, W] / [H, W, C] (uint8, or floats in [0, 1])."""
    if not self.enabled:
      return
    Summary = tensorboardx('proto.summary_pb2').Summary
    if isinstance(image, (str, Path)):
      data = Path(image).read_bytes()
      try:
        height, width, channels = png_header(data)
      except ValueError:
        raise ValueError(f'{image}: not a PNG image') from None
      proto = Summary.Image(height=height, width=width, colorspace=channels,
                            encoded_image_string=data)
      summary = Summary(value=[Summary.Value(tag=tag, image=proto)])
    else:
      image_summary = tensorboardx('summary').image
      array = np.asarray(image)
      summary = image_summary(tag, array if array.ndim == 3 else array[..., None],
                              dataformats='HWC')
    self._write_event(int(step), summary)

  def flush(self) -> None:
    """Everything is flushed as it is written; kept for the writer interface."""
    for f in (self._file, self._events):
      if f is not None:
        f.flush()

  def close(self) -> None:
    for f in (self._file, self._events):
      if f is not None:
        f.close()
    self._file = self._events = None

  def __enter__(self) -> 'MetricWriter':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
