"""Latent caching on generated images with a tiny random AutoencoderKL; the ADM crop; the latents dataset
(label dropout) and the deterministic, rank-sharded epoch sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gmflow.cli import main as cli_main
from gmflow.data import (
    EpochBatchSampler,
    LatentDataset,
    adm_center_crop,
    cache_latents,
    image_to_array,
    read_class_names,
    read_list_file,
)
from gmflow.data.cache import flip_and_noise_seed

from imagenet_tiny import tiny_vae, write_synthetic_latents

SIZE = 16  # crop size of the tests (the x2 tiny VAE gives 8x8 latents)


def _images(root):
    """Generated 'ImageNet' files: RGB JPEGs of several sizes, a grey JPEG, an RGBA PNG; and the list file."""
    rng = np.random.default_rng(0)
    specs = [("n01/a.JPEG", (40, 30), "RGB", 3), ("n01/b.JPEG", (70, 33), "RGB", 7), ("n02/c.JPEG", (33, 90), "L", 1),
             ("n02/d.png", (16, 16), "RGBA", 999), ("n03/e.JPEG", (128, 64), "RGB", 5)]
    lines = []
    for rel, (w, h), mode, label in specs:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
        arr = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8).squeeze()
        Image.fromarray(arr, mode).save(root / rel)
        lines.append(f"{rel} {label}")
    (root.parent / "train.txt").write_text("\n".join(lines) + "\n")
    return root.parent / "train.txt", specs


def test_adm_center_crop_geometry():
    # a horizontal ramp: the crop keeps the middle columns; halving happens while the short side >= 2 size
    ramp = np.tile(np.linspace(0, 255, 600).astype(np.uint8), (520, 1))
    out = adm_center_crop(Image.fromarray(ramp), 256)
    assert out.size == (256, 256)
    centre = np.asarray(out, dtype=np.float64)[:, 128].mean()
    assert abs(centre - 127.5) < 3
    arr = image_to_array(Image.fromarray(np.dstack([ramp] * 3)), 64)
    flipped = image_to_array(Image.fromarray(np.dstack([ramp] * 3)), 64, flip=True)
    assert arr.shape == (3, 64, 64) and arr.dtype == np.float32 and -1 <= arr.min() and arr.max() <= 1
    np.testing.assert_array_equal(flipped, arr[:, :, ::-1])
    assert image_to_array(Image.new("L", (50, 40), 255), 32).shape == (3, 32, 32)
    assert np.all(image_to_array(Image.new("RGBA", (50, 40), (255, 0, 0, 10)), 32)[0] == 1.0)


def test_cache_latents_sharded_resumable_and_exact(tmp_path):
    list_file, specs = _images(tmp_path / "train")
    vae = tiny_vae(tmp_path / "vae")
    out = tmp_path / "train_cache"
    # two "ranks" by hand (no process group): the list is written by whichever call completes the cache
    r0 = cache_latents(tmp_path / "train", list_file, tmp_path / "vae", out, image_size=SIZE, batch_size=2,
                       num_workers=0, seed=7, rank=0, world_size=2, progress=False)
    assert (r0.written, r0.skipped, r0.total, r0.list_file) == (3, 0, 5, None)
    r1 = cache_latents(tmp_path / "train", list_file, vae, out, image_size=SIZE, batch_size=2, num_workers=0,
                       seed=7, rank=1, world_size=2, progress=False)
    assert (r1.written, r1.list_file) == (2, tmp_path / "train_cache.txt")
    listed = read_list_file(r1.list_file)
    assert [e.path for e in listed] == ["n01/a.pth", "n01/b.pth", "n02/c.pth", "n02/d.pth", "n03/e.pth"]
    assert [e.label for e in listed] == [s[3] for s in specs]

    # every latent is the posterior sample of its (once-per-image) flipped crop, times the scaling factor
    for rel, _, _, label in specs:
        data = torch.load(out / (rel.rsplit(".", 1)[0] + ".pth"), weights_only=True)
        assert data["x"].dtype == torch.float32 and data["x"].shape == (4, SIZE // 2, SIZE // 2)
        assert data["y"].dtype == torch.int64 and int(data["y"]) == label
        flip, noise_seed = flip_and_noise_seed(7, rel)
        with Image.open(tmp_path / "train" / rel) as im:
            x = torch.from_numpy(image_to_array(im, SIZE, flip))[None]
        with torch.no_grad():
            post = vae.encode(x).latent_dist
        noise = torch.randn(post.mean.shape[1:], generator=torch.Generator().manual_seed(noise_seed))
        expected = (post.mean[0] + post.std[0] * noise) * vae.config.scaling_factor
        torch.testing.assert_close(data["x"], expected, rtol=1e-5, atol=1e-6)

    # resumable: only the missing latent is recomputed, identically
    before = torch.load(out / "n02" / "c.pth", weights_only=True)["x"]
    (out / "n02" / "c.pth").unlink()
    (tmp_path / "train_cache.txt").unlink()
    code = cli_main(["cache-latents", "--images", str(tmp_path / "train"), "--list", str(list_file), "--vae",
                     str(tmp_path / "vae"), "--out", str(out), "--image-size", str(SIZE), "--batch-size", "4",
                     "--workers", "0", "--seed", "7", "--device", "cpu", "--no-progress"])
    assert code == 0
    torch.testing.assert_close(torch.load(out / "n02" / "c.pth", weights_only=True)["x"], before, rtol=1e-5,
                               atol=1e-6)
    assert (tmp_path / "train_cache.txt").read_text() == "".join(
        f"{e.path} {e.label}\n" for e in listed)
    # the flip is a fair coin over images
    flips = [flip_and_noise_seed(2021, f"n{i // 50}/{i}.JPEG")[0] for i in range(2000)]
    assert 0.45 < np.mean(flips) < 0.55
    assert cli_main(["cache-latents", "--images", str(tmp_path), "--list", str(list_file), "--vae",
                     str(tmp_path / "no_vae"), "--out", str(out)]) == 2


def test_latent_dataset_label_dropout_and_sampler(tmp_path):
    root = write_synthetic_latents(tmp_path / "cache", n=30)
    ds = LatentDataset(root, label_dropout=0.25, null_class=10, seed=3)
    item = ds[(4, 0)]
    assert item["latents"].shape == (4, 8, 8) and item["labels"].dtype == torch.int64 and item["ids"] == 4
    assert int(ds[5]["labels"]) in (5, 10)
    drops = [ds.drops_label(i % 30, i // 30) for i in range(3000)]
    assert 0.22 < np.mean(drops) < 0.28
    assert drops == [ds.drops_label(i % 30, i // 30) for i in range(3000)]  # a function of (seed, epoch, index)
    assert [ds.drops_label(i, 0) for i in range(30)] != [ds.drops_label(i, 1) for i in range(30)]
    assert LatentDataset(root, label_dropout=1.0, null_class=10)[(0, 0)]["labels"] == 10
    with pytest.raises(FileNotFoundError, match="cache-latents"):
        LatentDataset(tmp_path / "nothing")

    samplers = [EpochBatchSampler(30, 4, rank=r, world_size=3, seed=1) for r in range(3)]
    assert samplers[0].batches_per_epoch == 2  # 10 per rank -> 2 batches of 4 (2 dropped)
    for it in range(6):
        batches = [s.batch(it) for s in samplers]
        assert all(len(b) == 4 and {e for _, e in b} == {it // 2} for b in batches)
        flat = [i for b in batches for i, _ in b]
        assert len(set(flat)) == 12  # disjoint across ranks
    epoch0 = [i for it in range(2) for i, _ in samplers[0].batch(it)]
    epoch1 = [i for it in range(2, 4) for i, _ in samplers[0].batch(it)]
    assert epoch0 != epoch1
    fresh = EpochBatchSampler(30, 4, rank=0, world_size=3, seed=1)
    assert list(fresh.iterate(3, 6)) == [samplers[0].batch(i) for i in range(3, 6)]  # resume = skip to iteration
    assert fresh.state_dict(5)["epoch"] == 2 and fresh.state_dict(5)["batch_in_epoch"] == 1
    with pytest.raises(ValueError, match="fewer than"):
        EpochBatchSampler(5, 4, world_size=2)


def test_class_names(tmp_path):
    (tmp_path / "names.txt").write_text("{0: 'tench, Tinca tinca',\n 17: 'jay',\n}")
    assert read_class_names(tmp_path / "names.txt") == {0: "tench, Tinca tinca", 17: "jay"}
    (tmp_path / "lines.txt").write_text("0: 'tench',\n1: 'goldfish',\n")
    assert read_class_names(tmp_path / "lines.txt")[1] == "goldfish"
