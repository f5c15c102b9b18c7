"""Progress written to a file or pipe is plain lines, not carriage-return frames."""

import io
import os
import subprocess
import sys
from pathlib import Path

from unetseg.progress import LineProgress, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_pipe_gets_a_bounded_number_of_plain_lines() -> None:
    out = io.StringIO()
    assert list(progress(range(1000), desc="predict", unit="image", stream=out)) == list(
        range(1000))
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 1 <= len(lines) <= 11
    assert lines[-1].startswith("predict: 1000/1000 image (100%)")


def test_one_line_per_epoch_with_every_100() -> None:
    out = io.StringIO()
    bar = progress(total=250, desc="train", unit="step", leave=False, stream=out, every=100.0)
    for _ in range(250):
        bar.update(1)
        bar.set_postfix(loss="0.1234")
    bar.close()
    assert out.getvalue().splitlines() == [line for line in out.getvalue().splitlines()
                                           if line.startswith("train: 250/250 step (100%)")]
    assert len(out.getvalue().splitlines()) == 1 and "loss=0.1234" in out.getvalue()


def test_disabled_prints_nothing_and_a_terminal_gets_tqdm() -> None:
    out = io.StringIO()
    assert list(progress([1, 2], disable=True, stream=out)) == [1, 2]
    assert out.getvalue() == ""
    bar = progress([1, 2], stream=Terminal())
    assert not isinstance(bar, LineProgress)
    bar.close()


def test_predict_into_a_pipe_writes_no_frames(tmp_path: Path) -> None:
    from shipping import sample_images, tiny_model

    model = tiny_model(tmp_path / "m.safetensors")
    images = tmp_path / "images"
    images.mkdir()
    for path in sample_images()[:3]:
        (images / path.name).write_bytes(path.read_bytes())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "unetseg.cli", "predict", str(model),
                           str(images), "--out", str(tmp_path / "out"), "--device", "cpu",
                           "--tile", "256"], capture_output=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert b"\r" not in done.stderr  # bytes: text mode would turn carriage returns into newlines
    lines = done.stderr.decode().splitlines()
    assert 1 <= len(lines) <= 4 and lines[-1].startswith("predict: 3/3 image (100%)")


def test_training_into_a_pipe_writes_a_line_per_epoch(tmp_path: Path) -> None:
    from helpers import write_dataset

    data = write_dataset(tmp_path / "data", 3, size=(40, 48))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "unetseg.cli", "train", str(data), "--out",
                           str(tmp_path / "run"), "--epochs", "3", "--steps-per-epoch", "4",
                           "--width", "4", "--depth", "2", "--patch-size", "32",
                           "--device", "cpu"], capture_output=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert b"\r" not in done.stderr + done.stdout  # bytes: text mode hides carriage returns
    assert [line.split(":")[0] for line in done.stderr.decode().splitlines()
            if line.startswith("epoch ")] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
