"""The on-disk dataset store: streaming validation equals one pass, the store is reused, and statistics stream."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_dataset
from cpfd.data import DatasetError, load_dataset
from cpfd.data import prepared, store, table
from cpfd.models import statistics


def _arrays(data) -> dict[str, np.ndarray]:
    out = {"ids": np.asarray(data.ids), "split": np.asarray(data.split), "groups": np.asarray(data.groups),
           "privileged": data.privileged.numpy()}
    out |= {f"student.{k}": v.numpy() for k, v in data.student_inputs.items()}
    out |= {f"label.{k}": v.numpy() for k, v in data.labels.items()}
    out |= {f"mask.{k}": v.numpy() for k, v in data.label_mask.items()}
    return out


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_streaming_in_small_chunks_equals_one_chunk(tmp_path, monkeypatch, fmt):
    # "sport" appears only after row 50: classes are inferred over the whole table, not the first chunk.
    def late_class(df):
        df.loc[:49, "category"] = df.loc[:49, "category"].replace("sport", "news")
        return df

    folder = make_dataset(tmp_path / fmt, n=120, n_unlabelled=20, fmt=fmt, with_split=False, mutate=late_class)
    whole = load_dataset(folder, seed=3, extract=None)
    monkeypatch.setattr(table, "CHUNK_ROWS", 7)
    monkeypatch.setattr(prepared, "iter_table", lambda paths, chunk_rows=7, columns=None:
                        table.iter_table(paths, 7, columns))
    chunked = load_dataset(folder, seed=3, extract=ExtractConfigWithCache(tmp_path / "other-cache"))
    assert chunked.store != whole.store
    assert [t.classes for t in chunked.tasks] == [t.classes for t in whole.tasks] == \
        [["0", "1"], ["music", "news", "sport"], ["a", "b"]]
    a, b = _arrays(whole), _arrays(chunked)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert chunked.fingerprint == whole.fingerprint
    assert int((chunked.split == "train").sum()) == 20 + 96


def ExtractConfigWithCache(path):
    from cpfd.config import ExtractConfig

    return ExtractConfig(cache_dir=str(path))


def test_problems_across_chunks_are_merged_and_located(tmp_path, monkeypatch):
    def broken(df):
        df.loc[40, "video_id"] = "v0003"  # duplicate of a row in another chunk
        df["dense_1"] = df["dense_1"].astype(object)
        df.loc[[2, 30], "dense_1"] = "oops"  # the same problem in two chunks: one entry, both rows
        return df

    folder = make_dataset(tmp_path / "ds", n=60, fmt="csv", mutate=broken)
    monkeypatch.setattr(prepared, "iter_table", lambda paths, chunk_rows=0, columns=None:
                        table.iter_table(paths, 16, columns))
    with pytest.raises(DatasetError) as info:
        load_dataset(folder)
    problems = {(p.message, p.column): p for p in info.value.problems}
    dup = problems[("duplicate id", "video_id")]
    assert dup.rows == [4, 41] and dup.ids == ["v0003", "v0003"]
    bad = problems[("non-numeric value in a privileged feature", "dense_1")]
    assert bad.rows == [3, 31] and bad.file.endswith("data.csv")
    assert not list((tmp_path / "ds" / ".cpfd_cache" / "store").glob(".build-*")), "a failed build is removed"


def test_a_second_load_opens_the_store_without_revalidating(tmp_path, monkeypatch):
    folder = make_dataset(tmp_path / "ds", n=80)
    first = load_dataset(folder)
    assert isinstance(first.ids, np.memmap) and isinstance(first.mapped[0], np.memmap)
    monkeypatch.setattr(prepared, "_build", lambda *a, **k: pytest.fail("the store was rebuilt"))
    again = load_dataset(folder)
    assert again.store == first.store and again.fingerprint == first.fingerprint
    for name, value in _arrays(first).items():
        np.testing.assert_array_equal(value, _arrays(again)[name], err_msg=name)


def test_changed_data_builds_a_new_store_and_old_ones_are_pruned(tmp_path):
    folder = make_dataset(tmp_path / "ds", n=80)
    stores = []
    for k in range(store.KEEP_STORES + 1):
        df = pd.read_parquet(folder / "data.parquet")
        df.loc[0, "dense_0"] = float(k)
        df.to_parquet(folder / "data.parquet")
        data = load_dataset(folder)
        assert float(data.privileged[0, 0]) == k
        stores.append(data.store)
    assert len(set(stores)) == len(stores)
    assert [s.exists() for s in stores] == [False] + [True] * store.KEEP_STORES


def test_concurrent_builds_of_one_store_keep_the_first(tmp_path):
    cache = tmp_path / "cache"
    first, second = store.begin(cache), store.begin(cache)
    store.write_array(first, "x", np.arange(3))
    store.write_array(second, "x", np.arange(3) + 10)
    kept = store.commit(first, "k", {"name": "n", "root": "r"})
    assert store.commit(second, "k", {"name": "n", "root": "r"}) == kept
    assert np.load(kept / "x.npy").tolist() == [0, 1, 2] and not second.exists()


def test_array_writer_joins_parts_and_stores_float16(tmp_path):
    writer = store.ArrayWriter(tmp_path, "emb", np.float16)
    writer.append(np.full((2, 3), 0.5, np.float32))
    writer.append(np.full((1, 3), 1.25, np.float32))
    ids = store.ArrayWriter(tmp_path, "ids")
    ids.append(np.array(["a"], dtype=object))
    ids.append(np.array(["long-id"], dtype=object))
    emb = np.load(writer.finish(), mmap_mode="c")
    assert emb.dtype == np.float16 and emb.shape == (3, 3) and emb[:, 0].tolist() == [0.5, 0.5, 1.25]
    assert np.load(ids.finish()).tolist() == ["a", "long-id"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy", "ids.npy"]
    from cpfd.train.batches import as_model_input

    assert as_model_input(torch.from_numpy(np.asarray(emb))).dtype == torch.float32


def test_subset_arrays_keeps_rows_in_order(tmp_path):
    store.write_array(tmp_path, "x", np.arange(10).reshape(5, 2))
    store.subset_arrays(tmp_path, ["x"], np.array([True, False, True, False, True]))
    assert np.load(tmp_path / "x.npy").tolist() == [[0, 1], [4, 5], [8, 9]]


def test_column_moments_stream_over_blocks_and_ignore_nan(monkeypatch):
    monkeypatch.setattr(statistics, "BLOCK_ROWS", 2)
    values = torch.tensor([[1.0, 5.0], [2.0, float("nan")], [6.0, 5.0], [100.0, 7.0], [3.0, 9.0]])
    rows = torch.tensor([0, 1, 2, 4])  # row 3 is not a train row
    mean, std, skew = statistics.column_moments(values, rows)
    # column 0 over 1, 2, 6, 3: mean 3, population variance (4 + 1 + 9 + 0) / 4 = 3.5,
    # third moment (-8 - 1 + 27 + 0) / 4 = 4.5, skew 4.5 / 3.5 ** 1.5
    # column 1 over 5, 5, 9 (NaN ignored): mean 19/3
    assert mean.tolist() == pytest.approx([3.0, 19 / 3])
    assert std[0].item() == pytest.approx(3.5**0.5)
    assert skew[0].item() == pytest.approx(4.5 / 3.5**1.5, rel=1e-5)
    assert std[1].item() == pytest.approx(np.std([5.0, 5.0, 9.0]))
    asked = []
    read = lambda v, r: (asked.append(r.tolist()), v[r])[1]  # noqa: E731
    assert statistics.column_moments(values, rows, read=read)[0].tolist() == pytest.approx([3.0, 19 / 3])
    assert asked == [[0, 1], [2, 4]] * 2  # two passes, blocks of 2 rows, through ``read``


def test_released_pages_keep_in_place_edits(tmp_path):
    store.write_array(tmp_path, "x", np.arange(4096 * 4, dtype=np.float32))
    x = store.open_array(tmp_path, "x")
    x[5] = -1.0  # copy-on-write: the edit lives in this process only
    store.release_pages([x])
    assert x[5] == -1.0 and x[6] == 6.0
    assert np.load(tmp_path / "x.npy")[5] == 5.0


@pytest.mark.parametrize("n,world,epoch", [(10, 1, 0), (10, 3, 2), (7, 4, 1), (3, 8, 5)])
def test_shuffled_shard_is_distributed_samplers_order(n, world, epoch):
    from torch.utils.data import DistributedSampler

    from cpfd.train.batches import ShuffledShard

    for rank in range(world):
        reference = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=7)
        reference.set_epoch(epoch)
        mine = ShuffledShard(n, world, rank, seed=7)
        mine.set_epoch(epoch)
        assert list(mine) == list(reference) and len(mine) == len(reference)
        rest = mine.skipping(2)
        assert list(rest) == list(reference)[2:] and len(rest) == max(len(reference) - 2, 0)


@pytest.mark.parametrize("n,world,block", [(10, 1, 4), (23, 2, 5), (7, 3, 3)])
def test_block_shuffle_keeps_runs_together_and_covers_every_row(n, world, block):
    from cpfd.train.batches import ShuffledShard

    shares = []
    for rank in range(world):
        mine = ShuffledShard(n, world, rank, seed=3, block_rows=block)
        mine.set_epoch(1)
        order = list(mine)
        assert len(order) == len(mine) == -(-n // world)
        shares.append(order)
        # Each run of `block` consecutive rows (the last one shorter) is read in one piece, ascending.
        starts = [k for k in range(len(order)) if k == 0 or order[k] != order[k - 1] + 1]
        assert all(order[s] % block == 0 or s == 0 for s in starts)
        assert mine.skipping(2).__iter__().__next__() == order[2]
    everything = [i for share in shares for i in share]
    assert set(everything) == set(range(n))  # padding repeats rows only to even out the ranks' lengths
    assert len(everything) - n == -(-n // world) * world - n
    again = ShuffledShard(n, world, 0, seed=3, block_rows=block)
    again.set_epoch(2)
    assert list(again) != shares[0] or n <= block  # another epoch, another order of runs


def test_jsonl_chunk_without_an_optional_key_reads_it_as_missing(tmp_path, monkeypatch):
    import json

    folder = make_dataset(tmp_path / "ds", n=60, fmt="jsonl")
    rows = [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines()]
    for row in rows[16:32]:  # the whole second chunk leaves the label out
        row.pop("category")
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(prepared, "iter_table", lambda paths, chunk_rows=0, columns=None:
                        table.iter_table(paths, 16, columns))
    data = load_dataset(folder)
    mask = data.label_mask["category"].numpy()
    assert not mask[16:32].any() and mask[:16].all() and mask[32:].all()


def test_store_key_ignores_how_extraction_runs_but_not_what_it_makes():
    from cpfd.config import ExtractConfig

    base = prepared._semantic(ExtractConfig())
    assert prepared._semantic(ExtractConfig(workers=7, batch_size=3, shard_size=5, device="cuda")) == base
    assert prepared._semantic(ExtractConfig(max_tokens=16)) != base
    assert prepared._semantic(ExtractConfig(store_float16=True)) != base


def test_row_dataset_hands_pages_back_every_n_batches(tmp_path):
    from cpfd.train.batches import RowDataset

    data = load_dataset(make_dataset(tmp_path / "ds", n=40))
    calls = []
    data.release_memory = lambda: calls.append(1)
    rows = RowDataset(data, np.arange(40), release_every=3)
    for k in range(7):
        rows.__getitems__([k])
    assert len(calls) == 2  # after the 3rd and 6th batch
    never = RowDataset(data, np.arange(40), release_every=0)
    for k in range(7):
        never.__getitems__([k])
    assert len(calls) == 2


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_row_reader_equals_indexing_the_map_in_any_order(tmp_path, dtype):
    values = np.arange(50 * 3 * 2, dtype=np.float32).reshape(50, 3, 2).astype(dtype)
    store.write_array(tmp_path, "x", values)
    read = store.RowReader(store.open_array(tmp_path, "x"))
    # runs (3..6), a repeat (DistributedSampler padding), unsorted rows, the first and last rows
    rows = np.array([49, 3, 4, 5, 6, 0, 6, 17, 16, 48])
    out = read(rows)
    assert out.dtype == dtype and out.shape == (10, 3, 2)
    np.testing.assert_array_equal(out, values[rows])
    np.testing.assert_array_equal(read(np.arange(50)), values)
    assert read(np.array([], dtype=np.int64)).shape == (0, 3, 2)
    with pytest.raises(IndexError, match="out of range"):
        read(np.array([50]))


def test_row_reader_of_a_truncated_store_names_the_file(tmp_path):
    path = store.write_array(tmp_path, "x", np.ones((100, 4), np.float32))
    read = store.RowReader(store.open_array(tmp_path, "x"))
    with open(path, "r+b") as fh:  # damaged after opening: the map still claims 100 rows
        fh.truncate(path.stat().st_size - 8 * 16)
    with pytest.raises(store.StoreError, match="x.npy ends before row"):
        read(np.array([99]))


def test_batches_of_rows_leave_the_store_unmapped(tmp_path):
    """Random batches over a whole store add no file pages to the process (RssFile), unlike indexing the map."""
    rss_file = lambda: int(next(l for l in open("/proc/self/status") if l.startswith("RssFile")).split()[1])  # kB
    values = np.random.default_rng(0).normal(size=(100_000, 64)).astype(np.float32)  # 25.6 MB
    store.write_array(tmp_path, "student.features", values)
    mapped = store.open_array(tmp_path, "student.features")
    read = store.RowReader(mapped)
    order = np.random.default_rng(1).permutation(100_000)
    before = rss_file()
    for start in range(0, 100_000, 256):
        rows = np.sort(order[start : start + 256])
        assert np.array_equal(read(rows), values[rows])
    assert rss_file() - before < 2_000  # kB; the map itself would bring in ~25 000
    for start in range(0, 100_000, 256):
        mapped[np.sort(order[start : start + 256])]
    assert rss_file() - before > 12_000  # the check can tell: indexing the map does map its pages


def test_row_dataset_reads_the_stores_rows_and_follows_a_replaced_tensor(tmp_path):
    from cpfd.train.batches import RowDataset

    data = load_dataset(make_dataset(tmp_path / "ds", n=40))
    assert set(data.readers) == {"student.features", "privileged"}
    batch = RowDataset(data, np.arange(40), with_privileged=True).__getitems__([7, 2, 30])
    assert torch.equal(batch["index"], torch.tensor([7, 2, 30]))
    assert torch.equal(batch["student"]["features"], data.student_inputs["features"][[7, 2, 30]])
    assert torch.equal(batch["privileged"], data.privileged[[7, 2, 30]])
    data.privileged = torch.zeros_like(data.privileged)
    batch = RowDataset(data, np.arange(40), with_privileged=True).__getitems__([7])
    assert batch["privileged"].abs().sum() == 0


def test_calibration_rows_come_from_the_ids_of_validation_rows_alone(tmp_path):
    import hashlib

    data = load_dataset(make_dataset(tmp_path / "ds", n=400))
    val = np.asarray(data.split == "val")
    # The rule: the first 8 hex digits of sha1(id) / 2**32 below the share, among validation rows.
    fraction = np.array([int(hashlib.sha1(str(i).encode()).hexdigest()[:8], 16) / 2**32 for i in data.ids])
    for share in (0.3, 0.5):
        calib = data.calibration_rows(share)
        assert calib.dtype == bool and calib.shape == (400,)
        np.testing.assert_array_equal(calib, val & (fraction < share))
    np.testing.assert_array_equal(data.calibration_rows(0.0), val)
    rows = np.array([5, 2, 5, 399])
    np.testing.assert_array_equal(data.id_fraction(rows), fraction[rows])


def test_split_column_is_read_in_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "COPY_ROWS", 7)
    stored = np.array(["train", "val", "test", "train"] * 10, dtype="<U5")
    np.save(tmp_path / "split.npy", stored)
    split = prepared._split_column(store.open_array(tmp_path, "split"))
    np.testing.assert_array_equal(np.asarray(split), stored)
    assert split.codes.dtype == np.int8
