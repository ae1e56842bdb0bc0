"""MLKD's strong view: equal to the official transform, deterministic, aligned with the weak batches.

The goldens (tests/fixtures/strong_aug/golden.npz) are outputs of the official transform
run on stored draws; make_golden.py in that folder regenerates them from a checkout of the
official repository.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from kdbench.data import strong
from kdbench.data.loaders import TrainLoader, epoch_seed, normalize, require_strong_view, strong_seed
from kdbench.data.strong_workers import BROKEN_POOL
from kdbench.data.synthetic import generate
from kdbench.errors import KdbenchError

GOLDEN = np.load(Path(__file__).parent / "fixtures" / "strong_aug" / "golden.npz")
META = json.loads(str(GOLDEN["meta"]))


def _cases(name: str) -> list[tuple[np.ndarray, strong.StrongDraws, np.ndarray]]:
    """(zero-padded input as the loader stores it, draws, official output) per golden case."""
    images = GOLDEN[f"{name}_images"]
    cases = []
    for (image, crop_y, crop_x, flip), u, out in zip(GOLDEN[f"{name}_ints"], GOLDEN[f"{name}_floats"],
                                                     GOLDEN[f"{name}_outputs"]):
        padded = np.pad(images[image], ((4, 4), (4, 4), (0, 0)))
        if name == "grey":
            padded = padded[..., 0]
        draws = strong.StrongDraws(int(crop_y), int(crop_x), bool(flip), tuple(float(v) for v in u[:5]),
                                   (float(u[5]), float(u[6])))
        cases.append((padded, draws, out))
    return cases


# -- equal to the official transform -----------------------------------------------------


@pytest.mark.parametrize("name", ["rgb", "grey"])
def test_goldens_equal_the_official_transform(name):
    wrong = []
    for k, (padded, draws, want) in enumerate(_cases(name)):
        got = strong.strong_view(padded, draws, (32, 32))
        if not np.array_equal(got, want):
            wrong.append(f"case {k} {[op.name for op, _ in draws.ops()]}: {(got != want).sum()} values differ")
    assert not wrong, f"(goldens made with Pillow {META['pillow']}) " + "; ".join(wrong)


@pytest.mark.parametrize("name", ["rgb", "grey"])
def test_goldens_cover_every_op_crops_flips_and_cutouts(name):
    magnitudes: dict[str, set[float]] = {op.name: set() for op in strong.OPS}
    crops, flips, boxes = set(), set(), []
    for _, draws, _ in _cases(name):
        for op, magnitude in draws.ops():
            magnitudes[op.name].add(magnitude)
        crops.update((draws.crop_y, draws.crop_x))
        flips.add(draws.flip)
        boxes.append(strong.cutout_box(draws.cutout_fraction(), draws.cutout_uniforms, 32, 32))
    assert all(len(m) >= 5 for m in magnitudes.values()), {k: len(m) for k, m in magnitudes.items()}
    assert {0, 4, 8} <= crops and flips == {False, True}
    assert None in boxes
    drawn = [b for b in boxes if b is not None]
    assert any(b[0] == 0 and b[2] == 0 for b in drawn) and any(b[1] > 32 or b[3] > 32 for b in drawn)


def _test_pictures(channels: int, n: int = 150) -> list[np.ndarray]:
    """Noise, few-valued and flat images: the cases the histogram rules branch on."""
    rng = np.random.RandomState(channels)
    shape = (32, 32) if channels == 1 else (32, 32, 3)
    pictures = []
    for k in range(n):
        levels = rng.choice([1, 2, 3, 5, 40, 256])
        values = rng.randint(0, 256, levels)
        pictures.append(values[rng.randint(0, levels, shape)].astype(np.uint8))
    return pictures


PIL_REFERENCE = {
    "AutoContrast": lambda img, v: ImageOps.autocontrast(img),
    "Equalize": lambda img, v: ImageOps.equalize(img),
    "Posterize": lambda img, v: ImageOps.posterize(img, max(1, int(v))),
    "Solarize": lambda img, v: ImageOps.solarize(img, v),
    "Contrast": lambda img, v: ImageEnhance.Contrast(img).enhance(v),
    "Color": lambda img, v: ImageEnhance.Color(img).enhance(v),
}


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("name", sorted(PIL_REFERENCE))
def test_ops_computed_with_numpy_equal_pil(name, channels):
    """The ops kdbench computes itself equal PIL's, on many images and magnitudes."""
    op = next(op for op in strong.OPS if op.name == name)
    rng = random.Random(0)
    for picture in _test_pictures(channels):
        v = op.low + float(op.high - op.low) * rng.random()
        want = np.asarray(PIL_REFERENCE[name](Image.fromarray(picture), v))
        got = strong._arr(op.apply(picture, v))
        assert np.array_equal(got, want), (name, v)


def test_equalize_clips_its_table_like_pil():
    """A histogram whose equalisation table reaches 256 at the top value (PIL clips it to 255)."""
    picture = np.zeros((32, 32), dtype=np.uint8)
    picture.flat[:1023] = np.arange(1023) % 255  # 255 levels, 4 or 5 pixels each
    picture.flat[1023] = 255
    want = np.asarray(ImageOps.equalize(Image.fromarray(picture)))
    assert np.array_equal(strong.equalize(picture, 0.0), want)


def test_numpy_uniform_is_the_formula_the_cutout_uses():
    for seed in range(200):
        got = np.random.RandomState(seed).uniform(32)
        assert got == 32 + (1.0 - 32) * np.random.RandomState(seed).random_sample()


def test_op_choices_map_uniforms_as_random_choices_does():
    class Replay(random.Random):
        def __init__(self, values):
            super().__init__(0)
            self.values = list(values)

        def random(self):
            return self.values.pop(0)

    for seed in range(300):
        draws = strong.draw(seed)
        chosen = Replay(draws.uniforms[:2]).choices(strong.OPS, k=2)
        assert [op for op, _ in draws.ops()] == chosen


def test_draws_are_deterministic_and_in_range():
    assert strong.draw(5) == strong.draw(5) != strong.draw(6)
    many = [strong.draw(s, pad=2, flip=False) for s in range(500)]
    assert {d.crop_y for d in many} == {d.crop_x for d in many} == set(range(5))
    assert not any(d.flip for d in many)
    assert {d.flip for d in (strong.draw(s) for s in range(100))} == {False, True}


def test_strong_seeds_are_distinct_from_each_other_and_the_weak_views():
    seeds = {strong_seed(s, e, i) for s in range(3) for e in range(1, 4) for i in range(50)}
    assert len(seeds) == 3 * 3 * 50
    assert not seeds & {epoch_seed(s, e) for s in range(3) for e in range(1, 4)}


# -- the loader ---------------------------------------------------------------------------


def _loader(channels: int = 3, n: int = 70, batch_size: int = 16, workers: int = 0, processes: bool = False,
            **kwargs) -> TrainLoader:
    """A synthetic split; its strong view made inline unless `workers` says otherwise."""
    images, labels = generate(n, 5, channels, 32, torch.Generator().manual_seed(0))
    kwargs.setdefault("indices", torch.arange(n) * 3 + 1)  # positions in a larger split
    loader = TrainLoader(images, labels, batch_size=batch_size, seed=11, mean=(0.5,) * channels,
                         std=(0.25,) * channels, **kwargs)
    loader.strong_workers, loader.strong_processes = workers, processes
    return loader


def _by_index(loader: TrainLoader, epoch: int, **kwargs) -> dict[int, torch.Tensor]:
    views = {}
    for (_, _, indices), images in zip(loader.epoch(epoch), loader.strong_batches(epoch, **kwargs)):
        views.update(zip(indices.tolist(), images))
    return views


@pytest.mark.parametrize("channels", [3, 1])
def test_strong_batches_are_the_strong_views_of_the_weak_batches_images(channels):
    loader = _loader(channels)
    store = loader.padded.permute(0, 2, 3, 1).numpy()
    store = store[..., 0] if channels == 1 else store
    position = {int(i): p for p, i in enumerate(loader.indices)}
    batches = list(loader.strong_batches(3))
    assert len(batches) == len(loader) == 5
    for (weak, _, indices), images in zip(loader.epoch(3), batches):
        assert images.shape == weak.shape and images.dtype == weak.dtype
        raw = np.stack([strong.strong_view(store[position[i]], strong.draw(strong_seed(11, 3, i)), (32, 32))
                        for i in indices.tolist()])
        want = normalize(torch.from_numpy(raw), loader.mean, loader.std)
        assert torch.equal(images, want)


def test_strong_batches_are_deterministic_and_differ_between_epochs():
    loader = _loader()
    first, again = list(_loader().strong_batches(2)), list(loader.strong_batches(2))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    one, two = _by_index(loader, 1), _by_index(loader, 2)
    assert sum(torch.equal(one[i], two[i]) for i in one) < 3


def test_resume_with_skip_gives_the_remaining_batches():
    loader = _loader()
    full = list(loader.strong_batches(4))
    resumed = list(loader.strong_batches(4, skip=2))
    assert len(resumed) == len(full) - 2
    assert all(torch.equal(a, b) for a, b in zip(full[2:], resumed))
    assert list(loader.strong_batches(4, skip=len(loader))) == []


def test_an_images_strong_view_does_not_depend_on_its_batch():
    small, large = _by_index(_loader(batch_size=7), 2), _by_index(_loader(batch_size=32), 2)
    assert small.keys() == large.keys()
    assert all(torch.equal(small[i], large[i]) for i in small)


@pytest.mark.slow
def test_threads_processes_and_inline_production_agree():
    inline = list(_loader().strong_batches(1))
    threads = _loader(workers=3)
    assert all(torch.equal(a, b) for a, b in zip(inline, threads.strong_batches(1)))
    threads.close()
    processes = _loader(workers=2, processes=True)
    assert all(torch.equal(a, b) for a, b in zip(inline, processes.strong_batches(1)))
    assert all(torch.equal(a, b) for a, b in zip(inline[3:], processes.strong_batches(1, skip=3)))
    processes.close()


def test_drawing_the_strong_view_leaves_the_weak_batches_unchanged():
    loader = _loader()
    before = list(loader.epoch(2))
    strong_view = loader.strong_batches(2)
    interleaved = [(batch, next(strong_view)) for batch in loader.epoch(2)]
    for (a, _), b in zip(interleaved, before):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.equal(x, y) for x, y in zip(list(loader.epoch(2))[-1], before[-1]))


def test_layout_and_dtype_follow_the_weak_view():
    loader = _loader(channels_last=True, dtype=torch.bfloat16)
    weak = next(loader.epoch(1))[0]
    images = next(loader.strong_batches(1))
    assert images.dtype == torch.bfloat16 and images.stride() == weak.stride()


def test_shards_concatenate_to_the_whole_batch():
    loader = _loader()
    whole = list(loader.strong_batches(1))
    parts = [list(loader.strong_batches(1, shard=(r, 3))) for r in range(3)]
    for k, batch in enumerate(whole):
        assert torch.equal(torch.cat([p[k] for p in parts]), batch)


def test_closing_early_cancels_and_close_stops_the_workers():
    before = threading.active_count()
    loader = _loader(n=300, workers=2)
    batches = loader.strong_batches(1)
    first = next(batches)
    batches.close()
    assert torch.equal(next(loader.strong_batches(1)), first)
    loader.close()
    assert threading.active_count() == before


def test_loaders_without_the_strong_view_fail_with_one_line():
    require_strong_view(_loader(), dataset="cifar100", method="mlkd")
    with pytest.raises(KdbenchError) as info:
        require_strong_view(object(), dataset="imagenet", method="mlkd")
    assert str(info.value) == (
        "dataset 'imagenet': method 'mlkd' needs the strong augmented view, which only the in-memory datasets "
        "with 1 or 3 channels provide (cifar100, fashion_mnist, tiny_imagenet, synthetic)"
    )
    two = _loader(channels=2)
    assert not two.supports_strong_view
    with pytest.raises(KdbenchError) as info:
        two.strong_batches(1)
    assert str(info.value) == (
        "the strong augmented view needs 1- or 3-channel images; this training split has 2 channels"
    )


@pytest.mark.slow
def test_an_unguarded_script_gets_one_line_about_spawn(tmp_path):
    """Worker processes are spawned: a script without a main guard is imported again in each."""
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent("""
        import torch
        from kdbench.data.loaders import TrainLoader
        loader = TrainLoader(torch.zeros(8, 3, 32, 32, dtype=torch.uint8), torch.zeros(8, dtype=torch.long),
                             batch_size=4, seed=0, mean=(0.5,) * 3, std=(0.25,) * 3)
        loader.strong_workers, loader.strong_processes = 1, True
        list(loader.strong_batches(1))
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == f"kdbench.errors.KdbenchError: {BROKEN_POOL}"


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # a zombie has ended; only its exit status waits to be read


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_workers_end_when_the_training_process_is_killed(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing, time, torch
        from kdbench.data.loaders import TrainLoader
        if __name__ == "__main__":
            loader = TrainLoader(torch.zeros(64, 3, 32, 32, dtype=torch.uint8), torch.zeros(64, dtype=torch.long),
                                 batch_size=4, seed=0, mean=(0.5,) * 3, std=(0.25,) * 3)
            loader.strong_workers, loader.strong_processes = 2, True
            batches = loader.strong_batches(1)
            next(batches), next(batches)
            print(*[p.pid for p in multiprocessing.active_children()], flush=True)
            time.sleep(300)
    """))
    # stderr dropped: the killed process's resource tracker reports the semaphores it cleans up.
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert workers
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 20
    while not all(_gone(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(_gone(pid) for pid in workers)
