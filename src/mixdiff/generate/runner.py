"""`mixdiff generate`: every (real image, variant) -> OUT/v<k>/<relative path>.<format>.

Sharded (each shard takes every N-th output; under torchrun or accelerate each rank is a shard),
resumable (a re-run skips outputs its manifest lists as written whose files are intact), lossless
(images are written to a temporary name and renamed) and overlapped: reading the next batch and
encoding and writing the last one run on threads while the generator works.

Nothing is written to OUT (but for the shard's lock file, `mixdiff.lock`: a second run of the same
shard is refused) until the settings, the real tree and the model have all been checked and the
model has loaded: a start that fails leaves OUT as it was, so the corrected command runs there
without --overwrite (and a failed --overwrite destroys nothing).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath

import yaml
from PIL import Image
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeRemainingColumn)

from mixdiff.data.tree import ImageTree, load_rgb, twin_key
from mixdiff.errors import ConfigError, UnreadableImageError
from mixdiff.generate import manifest
from mixdiff.generate.backends import Backend, build_backend, model_fingerprint
from mixdiff.generate.quiet import quiet_libraries
from mixdiff.generate.settings import FORMATS, GenerateSettings, changed_settings, image_seed
from mixdiff.io import atomic_open, atomic_write_text, file_sha256
from mixdiff.lock import exclusive, lock_name
from mixdiff.outputs import ReplacingError
from mixdiff.paths import inside, kept_inside

log = logging.getLogger(__name__)

SETTINGS_FILE = "generate.yaml"
VARIANT_FOLDER = re.compile(r"v\d+")  # OUT/v<k>: where the twins of variant k go


def output_path(source: str, variant: int, fmt: str) -> str:
    """Where the twin `variant` of the real image `source` is written, relative to OUT."""
    return f"v{variant}/{twin_key(source)}.{fmt}"


@dataclass(frozen=True)
class WorkItem:
    source: str  # relative path of the real image
    variant: int
    seed: int
    drawn: tuple[tuple[str, float], ...] = ()  # this image's values of the mixable options

    def output(self, fmt: str) -> str:
        return output_path(self.source, self.variant, fmt)

    def row(self, fmt: str, provenance: dict, **fields) -> dict:
        """Its manifest row: which output, from what, and how it was made."""
        return {"source": self.source, "variant": self.variant, "seed": self.seed,
                "path": self.output(fmt), **provenance, **dict(self.drawn), **fields}


@dataclass
class Summary:
    planned: int = 0  # outputs of this shard
    skipped: int = 0  # already complete
    written: int = 0
    failed: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False  # Ctrl-C: what was written is kept and in the manifest

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds else 0.0


def shard_from_environment() -> tuple[int, int]:
    """(rank, world size) under torchrun / accelerate / SLURM-launched torch, else (0, 1)."""
    for rank, world in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank in os.environ and world in os.environ:
            return int(os.environ[rank]), int(os.environ[world])
    return 0, 1


def plan(relpaths: Sequence[str], settings: GenerateSettings, shard: tuple[int, int],
         limit: int | None) -> list[WorkItem]:
    """This shard's outputs: every N-th of the (image, variant) list, in a fixed order."""
    chosen = list(relpaths)[:limit] if limit else list(relpaths)
    seeds = [(rel, k, image_seed(settings.seed, twin_key(rel), k))
             for rel in chosen for k in range(settings.variants)]
    items = [WorkItem(rel, k, seed, tuple(settings.drawn(seed).items()))
             for rel, k, seed in seeds]
    index, count = shard
    return items[index::count]


def check_settings(out: Path, settings: GenerateSettings, overwrite: bool) -> None:
    """Refuse to mix outputs of different settings in one OUT, unless --overwrite (which starts
    afresh). Raising --variants is allowed: it only adds outputs. Reads only: checked before the
    model loads, so a refusal costs nothing."""
    path = out / SETTINGS_FILE
    if path.exists() and not overwrite:
        saved = yaml.safe_load(path.read_text()) or {}
        if settings.model_sha256 and "model_sha256" not in saved:
            log.warning("%s records no fingerprint of its --model (written before mixdiff kept "
                        "one): its twins are taken as made by %s as it is now", path,
                        settings.model)
        changed = changed_settings(saved, settings.output_settings())
        if changed:
            details = "; ".join(f"{k}: {saved.get(k)!r} -> {getattr(settings, k)!r}"
                                for k in changed)
            raise SettingsChangedError(
                f"{out} was generated with other settings ({details}). Use another --out, the "
                "same settings to resume, or --overwrite to start afresh.", out, details)


class SettingsChangedError(ConfigError):
    """OUT holds outputs of other settings (`details`: what changed, old -> new)."""

    def __init__(self, message: str, out: Path, details: str):
        super().__init__(message)
        self.out, self.details = out, details


def start_run(out: Path, settings: GenerateSettings, shard: tuple[int, int],
              overwrite: bool) -> None:
    """Commit OUT to these settings, once the model has loaded. --overwrite removes only the
    manifest rows no rank of this run will write (shard files of another shard count); each rank
    empties its own shard file as it opens it, so one rank never deletes another's new rows."""
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        manifest.remove_other_shard_counts(out, shard[1])
    atomic_write_text(out / SETTINGS_FILE, yaml.safe_dump(asdict(settings), sort_keys=False))


def completed(out: Path, fmt: str, wanted: set[tuple[str, int]]) -> set[tuple[str, int]]:
    """Of the `wanted` (source, variant), those whose manifest row says written and whose file
    is the one written: its size and its sha256 as recorded (a file damaged in place since, even
    at the same size, is made again). Reads each wanted file once. A row's path is read only
    inside OUT (a link out of it included: refused), and only as the file of its own output (a
    row that names another file does not count that output as done)."""
    done = set()
    for key, row in manifest.latest(manifest.all_rows(out)).items():
        if key not in wanted or row["status"] != "ok":
            continue
        target = inside(out, row["path"], f"{out / manifest.SHARDS}: the row of {key[0]} "
                        f"(variant {key[1]})")
        if row["path"] != output_path(*key, fmt):
            continue
        if target.is_file() and target.stat().st_size == row["bytes"] and \
                file_sha256(target) == row.get("sha256"):
            done.add(key)
    return done


def stored(image: Image.Image, save_size: int | None) -> Image.Image:
    """The image resized (Lanczos) to a short side of `save_size`, aspect kept; None: as is."""
    if save_size is None or min(image.size) == save_size:
        return image
    scale = save_size / min(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def encode_and_write(image: Image.Image, target: Path, fmt: str, quality: int,
                     save_size: int | None = None) -> tuple[str, int]:
    """Resize to the stored side, encode, write atomically; returns (sha256, bytes)."""
    image = stored(image, save_size)
    buffer = io.BytesIO()
    options = {} if fmt == "png" else {"quality": quality}
    image.save(buffer, format=FORMATS[fmt], **options)
    data = buffer.getvalue()
    with atomic_open(target, "wb") as handle:
        handle.write(data)
    return hashlib.sha256(data).hexdigest(), len(data)


def _read(root: Path, items: list[WorkItem]) -> list[Image.Image | UnreadableImageError]:
    images: list = []
    for item in items:
        try:
            images.append(load_rgb(root / item.source))
        except UnreadableImageError as exc:
            images.append(exc)
    return images


def _progress(show: bool) -> Progress:
    console = Console(stderr=True)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]:.2f} img/s"), TimeRemainingColumn(),
                    console=console, disable=not (show and console.is_terminal), transient=True)


def refuse_overlap(real: Path, out: Path) -> None:
    """The twins go to OUT/v<k>/<class>/...: an OUT inside the real tree would make each v<k> a
    class of it (and every later scan of it, training included, would read the twins as real
    images), and a real tree inside OUT/v<k> would have its images replaced by their twins."""
    real, out = real.resolve(), out.resolve()
    if out == real or out.is_relative_to(real):
        raise ConfigError(f"--out {out} lies inside --real {real}: the twins (OUT/v<k>/...) "
                          "would become a class of the real tree; give an --out outside it")
    if real.is_relative_to(out) and VARIANT_FOLDER.fullmatch(real.relative_to(out).parts[0]):
        raise ConfigError(f"--real {real} lies inside --out {out}, where the twins are written "
                          "(OUT/v<k>/...): they would replace the real images; give an --out "
                          "that does not hold the real tree")


def refuse_links_out(out: Path, tree: ImageTree, variants: int, shard: tuple[int, int]) -> None:
    """Every folder and file generate writes under OUT (v<k>/ and the folders of its twins,
    manifests/ and this shard's file, generate.yaml, the manifest and the lock files) must lie
    inside OUT once links are followed: OUT/v0 or OUT/manifests linked to a folder elsewhere
    would have the twins and rows written over a user's files there. One check per folder, not
    per twin: a twin that is itself a link is replaced by a file of its own (`atomic_open`
    renames over the link), its target left as it was. OUT itself may be a link."""
    folders = {PurePosixPath(twin_key(rel)).parent for rel in tree.relpaths}
    written = [(f"v{k}", *folder.parts) for k in range(variants) for folder in sorted(folders)]
    written += [manifest.shard_path(out, *shard).relative_to(out).parts, (SETTINGS_FILE,),
                (manifest.MANIFEST,), (manifest.MERGE_LOCK,), (lock_name(shard_part(shard)),)]
    for parts in written:
        kept_inside(out, parts, "output folder", "the files `mixdiff generate` writes there "
                    "(v<k>/, manifests/, manifest.jsonl, generate.yaml)")


def refuse_foreign_files(out: Path) -> None:
    """An OUT that no generate has written (no generate.yaml, no manifest: both are written
    before the first twin) but that holds files under v<k>/, or a manifest.jsonl, holds someone
    else's files, which the twins (or the merged manifest) would replace. Refused, --overwrite
    too: it starts afresh only over generate's own outputs. Walks only such an OUT, and stops at
    its first file."""
    if (out / SETTINGS_FILE).exists() or manifest.shard_files(out):
        return
    if (out / manifest.MANIFEST).exists():
        raise ReplacingError(
            f"--out {out} holds {out / manifest.MANIFEST}, which no `mixdiff generate` wrote "
            f"({out} has no {SETTINGS_FILE} nor shard manifests), and generate would replace it "
            "with its own; give another --out, or move it out of it")
    for variant in sorted(out.glob("v*")):
        if not VARIANT_FOLDER.fullmatch(variant.name):
            continue
        for folder, _, files in os.walk(variant):
            if files:
                raise ReplacingError(
                    f"--out {out} holds {Path(folder) / files[0]}, which no `mixdiff generate` "
                    f"wrote ({out} has no {SETTINGS_FILE} nor manifest), and the twins written "
                    f"to {variant} would replace such files; give another --out, or move them "
                    "out of it")


def shard_part(shard: tuple[int, int]) -> str:
    """The name of a shard's lock: the ranks of one run write side by side, two runs of a shard
    may not."""
    return f"shard-{shard[0]}-of-{shard[1]}"


def generate(real: str | Path, out: str | Path, settings: GenerateSettings,
             shard: tuple[int, int] | None = None, limit: int | None = None,
             overwrite: bool = False, show_progress: bool = True,
             backend: Backend | None = None) -> Summary:
    """Generate this shard's missing outputs. Unreadable real images are recorded as failed and
    the run goes on; the summary lists them."""
    real, out = Path(real), Path(out)
    settings = settings.resolved()
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, not {limit}")
    shard = shard or shard_from_environment()
    refuse_overlap(real, out)
    tree = ImageTree.scan(real)
    refuse_links_out(out, tree, settings.variants, shard)
    refuse_foreign_files(out)
    with exclusive(out, "mixdiff generate", part=shard_part(shard)):
        return _generate(tree, real, out, settings, shard, limit, overwrite, show_progress,
                         backend)


def _generate(tree: ImageTree, real: Path, out: Path, settings: GenerateSettings,
              shard: tuple[int, int], limit: int | None, overwrite: bool, show_progress: bool,
              backend: Backend | None) -> Summary:
    # under the lock: another generate of this shard is said first, and the model folder (GBs
    # for Stable Diffusion) is hashed once
    settings = replace(settings, model_sha256=model_fingerprint(settings.model))
    check_settings(out, settings, overwrite)
    items = plan(tree.relpaths, settings, shard, limit)
    done = set() if overwrite else completed(out, settings.format,
                                             {(item.source, item.variant) for item in items})
    todo = [item for item in items if (item.source, item.variant) not in done]
    summary = Summary(planned=len(items), skipped=len(items) - len(todo))
    if todo:
        with quiet_libraries():
            backend = backend or build_backend(settings)  # fails at once on a bad model id
            start_run(out, settings, shard, overwrite)
            try:
                _run(backend, real, out, todo, shard, summary, show_progress, fresh=overwrite)
            except KeyboardInterrupt:  # Ctrl-C: keep what is written, merged, and say so
                summary.interrupted = True
    if out.is_dir():
        manifest.merge(out)
    return summary


def _run(backend: Backend, real: Path, out: Path, todo: list[WorkItem], shard: tuple[int, int],
         summary: Summary, show_progress: bool, fresh: bool) -> None:
    s = backend.settings
    provenance = backend.provenance() | {"save_size": s.save_size}
    batches = [todo[i:i + s.batch_size] for i in range(0, len(todo), s.batch_size)]
    start = time.perf_counter()
    with manifest.ShardWriter(manifest.shard_path(out, *shard), fresh=fresh) as writer, \
            ThreadPoolExecutor(max_workers=2) as readers, \
            ThreadPoolExecutor(max_workers=max(4, os.cpu_count() or 4)) as writers, \
            _progress(show_progress) as progress:
        task = progress.add_task(f"{s.generator} shard {shard[0]}/{shard[1]}", total=len(todo),
                                 rate=0.0)
        pending: list[tuple[WorkItem, Future]] = []
        next_read = readers.submit(_read, real, batches[0])
        try:
            for b, batch in enumerate(batches):
                images = next_read.result()
                if b + 1 < len(batches):
                    next_read = readers.submit(_read, real, batches[b + 1])
                good = [(item, im) for item, im in zip(batch, images)
                        if isinstance(im, Image.Image)]
                failed = [item.row(s.format, provenance, status="failed", error=str(im))
                          for item, im in zip(batch, images) if not isinstance(im, Image.Image)]
                summary.failed.extend(failed)
                writer.write(failed)
                alike: dict[tuple, list] = {}  # one call per drawn value of a mixture
                for item, image in good:
                    alike.setdefault(item.drawn, []).append((item, image))
                for drawn, members in alike.items():
                    inputs, seeds = [im for _, im in members], [it.seed for it, _ in members]
                    outputs = backend.variations(inputs, seeds, dict(drawn)) if drawn \
                        else backend(inputs, seeds)
                    for (item, _), image in zip(members, outputs):
                        target = out / item.output(s.format)
                        pending.append((item, writers.submit(encode_and_write, image, target,
                                                             s.format, s.quality, s.save_size)))
                pending = _collect(pending, writer, provenance, s.format, summary,
                                   wait=len(pending) > 2 * s.batch_size)
                elapsed = time.perf_counter() - start
                progress.update(task, completed=summary.written + len(summary.failed),
                                rate=summary.written / elapsed if elapsed else 0.0)
        finally:  # also when the generator fails: what is on disk gets its row, a re-run skips it
            _collect(pending, writer, provenance, s.format, summary, wait=True)
            summary.seconds = time.perf_counter() - start
        progress.update(task, completed=summary.written + len(summary.failed))


def _collect(pending, writer, provenance: dict, fmt: str, summary: Summary, wait: bool):
    """Record the writes that have finished (all of them when `wait`); return the rest."""
    rows, left = [], []
    for item, future in pending:
        if not wait and not future.done():
            left.append((item, future))
            continue
        digest, size = future.result()
        rows.append(item.row(fmt, provenance, status="ok", sha256=digest, bytes=size))
        summary.written += 1
    writer.write(rows)
    return left

