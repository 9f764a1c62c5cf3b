"""The embedded default: a deterministic short-video dataset generated at run time (no committed binaries).

Clips of two seconds with a moving shape, a coloured background and overlay text are written as mp4 (OpenCV,
``mp4v``), each with a title. Privileged dense "historical" features (uploader spam history, click
distribution over categories, audio music score, young-viewer share) carry information the frames and title do
not. Three tasks with label noise: ``spam`` (binary), ``category`` (4 classes), ``tags`` (multilabel). Half of
the train rows carry no label (privileged features only), as in production.

Three business scenarios make the teacher unreliable where confidence weighting can help (``method.md``, "When
can confidence weighting beat uniform PFD?"): ``mature`` videos have accurate history, ``new_upload`` videos
(20 %) have none (all privileged values missing), and ``stale`` videos — 80 % of the ``gaming`` and ``travel``
ones — carry the click history of what the listing used to be (``sports`` / ``cooking`` viewers). The labelled
train rows were logged when that history was still fresh, so the teacher learns to trust it and is often wrong
about the category (and the ``outdoor`` tag it implies) on the stale rows of current data (validation, test and
the unlabelled rows), concentrated in two categories the student can mostly see (the shape shows the category
three times in four). A teacher early-stopped on today's validation rows hedges between the frames and the stale
clicks; one trained and selected on the history table (``history=True``: the same rows as logged then, what
``cpfd demo`` fits its teacher on) follows the clicks. The uploader's spam record stays accurate everywhere:
that is where the teacher is clearly better than any student, and a stale signal there would be one the student
cannot locate (see ``bench/RESULTS.md``, "The demo's scenarios", for the earlier design that also inverted it).
``drift=False`` writes the in-distribution control: the same scenarios with accurate history everywhere. The
labels of the unlabelled rows go to ``hidden_labels.parquet`` beside the table, for the oracle-gate control of
benchmarks (``cpfd compare --oracle-labels``); the dataset never reads it.

The labelled rows are split ``shares`` = (train, validation, test); the demo keeps few train labels (the
unlabelled rows carry the teacher's knowledge) and large validation and test splits, which cost extraction
only, so that per-scenario estimates have rows to work with and differences can clear the noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

CATEGORIES = ["sports", "cooking", "gaming", "travel"]
TAGS = ["outdoor", "music", "kids"]
SHAPES = ["circle", "square", "triangle", "cross"]
CATEGORY_WORDS = {"sports": ["match", "goal", "team"], "cooking": ["recipe", "dinner", "bake"],
                  "gaming": ["level", "boss", "speedrun"], "travel": ["beach", "city", "trip"]}
FILLER = ["my", "best", "new", "video", "today", "watch", "this", "look", "day", "part"]
NEW_UPLOAD_SHARE = 0.2  # labelled rows without history (unlabelled rows always have some: they exist for the teacher)
STALE_DONOR = {"gaming": "sports", "travel": "cooking"}  # stale history: clicks of the category the listing used to be
STALE_SHARE = 0.8  # of the donor-affected categories' videos
SHOWN_SHARE = 0.75  # clips whose shape shows their category (the rest: a random shape)
DEMO_SHARES = (0.3, 0.35, 0.35)  # labelled rows: train, validation, test


def _draw(shape: str, frame: np.ndarray, centre: tuple[int, int], radius: int, colour: tuple[int, int, int]) -> None:
    import cv2

    x, y = centre
    if shape == "circle":
        cv2.circle(frame, centre, radius, colour, -1)
    elif shape == "square":
        cv2.rectangle(frame, (x - radius, y - radius), (x + radius, y + radius), colour, -1)
    elif shape == "triangle":
        pts = np.array([[x, y - radius], [x - radius, y + radius], [x + radius, y + radius]], np.int32)
        cv2.fillPoly(frame, [pts], colour)
    else:
        cv2.line(frame, (x - radius, y - radius), (x + radius, y + radius), colour, 6)
        cv2.line(frame, (x - radius, y + radius), (x + radius, y - radius), colour, 6)


def write_clip(path: Path, shape: str, background: tuple[int, int, int], colour: tuple[int, int, int],
               velocity: tuple[float, float], overlay: str, rng: np.random.Generator, frames: int = 16,
               size: int = 128, fps: int = 8) -> None:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    pos = rng.uniform(30, size - 30, 2)
    for _ in range(frames):
        frame = np.empty((size, size, 3), np.uint8)
        frame[:] = background
        noise = rng.integers(0, 20, (size, size, 1), dtype=np.uint8)
        frame = cv2.add(frame, np.repeat(noise, 3, axis=2))
        _draw(shape, frame, (int(pos[0]), int(pos[1])), 14, colour)
        if overlay:
            cv2.putText(frame, overlay, (6, size - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2)
        writer.write(frame[:, :, ::-1].copy())  # OpenCV writes BGR
        pos = (pos + velocity) % size
    writer.release()


def generate(folder: str | Path, n_labelled: int = 300, n_unlabelled: int = 300, seed: int = 0,
             noise: float = 0.1, drift: bool = True, shares: tuple[float, float, float] = (0.6, 0.2, 0.2),
             history: bool = False) -> Path:
    """Write ``folder/dataset.yaml``, ``folder/data.parquet``, ``folder/clips/*.mp4`` and
    ``folder/hidden_labels.parquet``; returns the folder. ``drift=False``: the in-distribution control;
    ``shares``: the (train, validation, test) fractions of the labelled rows; ``history``: also write
    ``folder/history/``, the same rows with the history as it was when the teacher was trained (fresh everywhere,
    validation included: the ``drift=False`` table), to fit the teacher on."""
    if len(shares) != 3 or min(shares) <= 0 or abs(sum(shares) - 1) > 1e-9:
        raise ValueError(f"shares must be three positive fractions summing to 1, got {shares}")
    folder = Path(folder)
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = n_labelled + n_unlabelled
    split = np.array(["train"] * n, dtype=object)
    order = rng.permutation(n_labelled)
    val_start, test_start = round(shares[0] * n_labelled), round((shares[0] + shares[1]) * n_labelled)
    split[order[val_start:test_start]] = "val"
    split[order[test_start:]] = "test"
    category = rng.integers(0, 4, n)
    # Unlabelled rows are only useful (and only allowed) with privileged features: no new uploads among them.
    new_upload = (rng.random(n) < NEW_UPLOAD_SHARE) & (np.arange(n) < n_labelled)
    donor_of = {CATEGORIES.index(c): CATEGORIES.index(d) for c, d in STALE_DONOR.items()}
    stale = np.isin(category, list(donor_of)) & (rng.random(n) < STALE_SHARE) & ~new_upload
    group = np.where(new_upload, "new_upload", np.where(stale, "stale", "mature"))
    # History went stale after the labelled train rows were logged: the teacher never sees a stale history.
    stale_now = stale & ~((np.arange(n) < n_labelled) & (split == "train")) & drift
    spam_propensity = rng.beta(1.2, 3.0, n)  # uploader history: the strongest spam signal, offline only
    spam = (spam_propensity + 0.08 * rng.normal(size=n)) > 0.4
    music = rng.random(n) < 0.35
    kids = rng.random(n) < 0.3
    outdoor = np.isin(category, [0, 3]) & (rng.random(n) < 0.8)
    records, fresh_clicks = [], []
    for i in range(n):
        # Frames: the shape shows the category SHOWN_SHARE of the time; green background = outdoor; yellow shape =
        # kids (weakly); a "SALE" overlay on a third of the spam clips.
        shown = category[i] if rng.random() < SHOWN_SHARE else rng.integers(0, 4)
        background = (40, 140, 60) if outdoor[i] else tuple(int(c) for c in rng.integers(30, 110, 3))
        colour = (240, 220, 40) if kids[i] and rng.random() < 0.5 else tuple(int(c) for c in rng.integers(120, 255, 3))
        overlay = "SALE" if spam[i] and rng.random() < 0.35 else ("" if rng.random() < 0.7 else "hi")
        velocity = tuple(rng.uniform(-6, 6, 2))
        clip = folder / "clips" / f"clip{i:04d}.mp4"
        write_clip(clip, SHAPES[shown], background, colour, velocity, overlay, rng)
        # Title: a category word half of the time, "song" for music videos 60 % of the time.
        words = list(rng.choice(FILLER, 3))
        if rng.random() < 0.5:
            words.append(rng.choice(CATEGORY_WORDS[CATEGORIES[category[i]]]))
        if music[i] and rng.random() < 0.6:
            words.append("song")
        if spam[i] and rng.random() < 0.25:
            words.append("free")
        rng.shuffle(words)
        # Privileged history: missing for new uploads; a stale one has the clicks of the listing's former category.
        spread = rng.dirichlet(np.ones(4) * 0.5) * 0.3
        clicks, fresh = spread.copy(), spread.copy()
        clicks[donor_of[category[i]] if stale_now[i] else category[i]] += 0.7
        fresh[category[i]] += 0.7
        dense = {"dense_spam_rate": spam_propensity[i], "dense_music_score": 0.7 * music[i] + 0.3 * rng.random(),
                 "dense_young_share": 0.6 * kids[i] + 0.4 * rng.random(),
                 **{f"dense_clicks_{c}": clicks[k] for k, c in enumerate(CATEGORIES)}}
        if group[i] == "new_upload":
            dense = {k: np.nan for k in dense}
        records.append({"video_id": f"clip{i:04d}", "video_path": f"clips/{clip.name}", "title": " ".join(words),
                        "scenario": group[i], **dense})
        fresh_clicks.append(fresh if group[i] != "new_upload" else np.full(4, np.nan))
    df = pd.DataFrame(records)

    def noisy(values: np.ndarray, flip) -> np.ndarray:
        values = values.copy()
        mask = rng.random(len(values)) < noise
        values[mask] = flip(values[mask])
        return values

    df["is_spam"] = noisy(spam.astype(int), lambda v: 1 - v)
    df["category"] = np.array(CATEGORIES)[noisy(category, lambda v: rng.integers(0, 4, len(v)))]
    tag_matrix = np.stack([outdoor, music, kids], 1)
    tag_matrix = np.where(rng.random(tag_matrix.shape) < noise / 2, ~tag_matrix, tag_matrix)
    df["tags"] = ["|".join(t for t, on in zip(TAGS, row) if on) for row in tag_matrix]
    df["split"] = split
    hidden = df.loc[n_labelled:, ["video_id", "is_spam", "category", "tags"]]
    hidden.to_parquet(folder / "hidden_labels.parquet", index=False)
    for col in ("is_spam", "category", "tags"):
        df[col] = df[col].astype(object)
        df.loc[n_labelled:, col] = None
    df.to_parquet(folder / "data.parquet", index=False)
    spec = {
        "format": 1, "name": "cpfd-demo-videos", "table": "data.parquet", "id": "video_id", "split": "split",
        "group": "scenario", "inputs": {"video": "video_path", "text": ["title"]}, "privileged": ["dense_*"],
        "tasks": [{"name": "spam", "type": "binary", "column": "is_spam"},
                  {"name": "category", "type": "multiclass", "column": "category", "classes": CATEGORIES},
                  {"name": "tags", "type": "multilabel", "column": "tags", "classes": TAGS}],
    }
    (folder / "dataset.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    if history:
        # The same clips, labels and splits as they were logged when the teacher was trained: fresh clicks.
        (folder / "history").mkdir(exist_ok=True)
        df[[f"dense_clicks_{c}" for c in CATEGORIES]] = np.array(fresh_clicks)
        df["video_path"] = "../" + df["video_path"]
        df.to_parquet(folder / "history" / "data.parquet", index=False)
        spec = {**spec, "name": "cpfd-demo-videos-history", "allow_outside": True}  # its clips are one folder up
        (folder / "history" / "dataset.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


# Sized for a few hundred clips on 2 CPU cores: small frames, short titles, small batches so that each epoch has
# several optimiser steps. The same settings for every arm. At 300 minimum steps every demo run's best checkpoint
# came before step 200 (the schedule is set by the 30 epochs), so 200 gives the same models in less time.
# The teacher is the network: the headroom design was measured with one (bench/RESULTS.md), and on a few hundred
# history rows `auto`'s choice would rest on a calibration slice of a few dozen clips.
DEMO_SETTINGS = ["teacher.kind=neural", "extract.sampling.num_frames=4", "extract.sampling.size=112",
                 "extract.workers=1", "extract.max_tokens=16", "train.batch_size=64", "train.epochs=30",
                 "train.min_steps=200", "train.patience_steps=60"]
