"""The bundle: one folder with a manifest (`replyrank.json`) and one sub-folder per model.

    bundle/
      replyrank.json        format version, hashes, prompt template, score meanings, threshold, validation
      generator/            model.onnx (graph), model.onnx.data (weights), config.json, tokenizer.json
      discriminator/        model.onnx, model.onnx.data, config.json, tokenizer.json
      upvotes/              model.onnx, model.onnx.data, config.json, tokenizer.json

`load_manifest` checks everything that can be checked without running a model: the format
version, that every listed path stays inside the folder, that every file exists and has the
sha256 the manifest recorded. A half-copied or edited bundle fails here, at load time, with a
message that says what to do, never later at the first call.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from .errors import BundleError

FORMAT_VERSION = 1
MANIFEST = "replyrank.json"
STAMP = ".replyrank-verified.json"  # (size, mtime, sha256) of files already verified
PARTS = ("generator", "discriminator", "upvotes")
# what the runtime reads from each part's entry: a hand-edited manifest without them fails at load
REQUIRED_KEYS = {"generator": ("prompt_template", "eos_token_ids", "context_length"), "discriminator": ("kind",), "upvotes": ("kind",)}


def default_bundle_dir() -> Path:
    """`$REPLYRANK_BUNDLE`, else the default bundle in the user's cache folder."""
    if os.environ.get("REPLYRANK_BUNDLE"):
        return Path(os.environ["REPLYRANK_BUNDLE"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "replyrank" / "default-bundle"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def inside(root: Path, relative: str) -> Path:
    """Resolve `relative` under `root`, refusing absolute paths, `..` and symlinks that leave it."""
    if Path(relative).is_absolute():
        raise BundleError(f"manifest path {relative!r} is absolute; bundle paths must be relative to the bundle folder")
    resolved = (root / relative).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise BundleError(f"manifest path {relative!r} points outside the bundle folder {root}; rebuild the bundle")
    return resolved


def load_tokenizer(path: Path) -> Tokenizer:
    """A part's `tokenizer.json`; one that `tokenizers` cannot read is a BundleError, like a broken graph."""
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception for malformed files
        raise BundleError(f"{path} is not a readable tokenizer ({error}); re-export the bundle") from error


def load_manifest(bundle_dir: str | Path, verify_hashes: bool = True) -> dict[str, Any]:
    """Read and check `bundle_dir/replyrank.json`; return it with each part's `dir` resolved."""
    root = Path(bundle_dir).expanduser()
    if not root.is_dir():
        raise BundleError(
            f"no bundle at {root}: build the default one with `replyrank build-default`, "
            "or pass --bundle / set REPLYRANK_BUNDLE to a bundle folder"
        )
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{root} has no {MANIFEST}; it is not a replyrank bundle (or its export did not finish)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"{manifest_path} is not valid JSON ({error}); re-export the bundle") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path} is not a JSON object; re-export the bundle")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path} has format version {version!r}; this replyrank reads version {FORMAT_VERSION}: "
            "upgrade replyrank or re-export the bundle"
        )
    for part in PARTS:
        entry = manifest.get(part)
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not isinstance(entry.get("files"), dict):
            raise BundleError(f"{manifest_path} has no valid {part!r} entry; re-export the bundle")
        missing = [key for key in REQUIRED_KEYS[part] if key not in entry]
        if missing:
            raise BundleError(f"{manifest_path}'s {part!r} entry lacks {', '.join(missing)}; re-export the bundle")
        part_dir = inside(root, entry["path"])
        for name in entry["files"]:
            if not inside(root, f"{entry['path']}/{name}").is_file():
                raise BundleError(f"bundle file {part}/{name} is missing from {root}; re-export or re-copy the bundle")
        entry["dir"] = part_dir
    threshold = manifest.get("realism_threshold", 0.5)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise BundleError(f"{manifest_path} has realism_threshold {threshold!r}, not a number in [0, 1]; re-export the bundle")
    manifest["root"] = root.resolve()
    if verify_hashes:
        verify_files(manifest)
    return manifest


def verify_files(manifest: dict[str, Any], use_stamp: bool = True) -> None:
    """Check every listed file's sha256 against the manifest.

    A file verified before, whose size and modification time are unchanged since, is not hashed
    again: the stamp file beside the manifest records them (written when the folder is writable).
    `use_stamp=False` hashes everything (`replyrank info` does).
    """
    root: Path = manifest["root"]
    stamp_path = root / STAMP
    try:
        stamp = json.loads(stamp_path.read_text()) if use_stamp and stamp_path.is_file() else {}
    except (OSError, ValueError):
        stamp = {}
    verified = {}
    for part in PARTS:
        for name, digest in manifest[part]["files"].items():
            key = f"{manifest[part]['path']}/{name}"
            path = inside(root, key)
            status = path.stat()
            seen = [status.st_size, status.st_mtime_ns, digest]
            if stamp.get(key) != seen and sha256(path) != digest:
                raise BundleError(
                    f"bundle file {part}/{name} does not match the sha256 in {MANIFEST} (changed or corrupted); "
                    "re-export or re-copy the bundle"
                )
            verified[key] = seen
    if verified != stamp:
        try:
            partial = stamp_path.with_name(f"{STAMP}.{os.getpid()}")
            partial.write_text(json.dumps(verified))
            partial.replace(stamp_path)
        except OSError:
            pass  # a read-only bundle is simply hashed at every load


def write_manifest(bundle_dir: Path, manifest: dict[str, Any]) -> None:
    """Hash every file of every part and write the manifest (used by the export side)."""
    for part in PARTS:
        part_dir = bundle_dir / manifest[part]["path"]
        manifest[part]["files"] = {
            path.relative_to(part_dir).as_posix(): sha256(path) for path in sorted(part_dir.rglob("*")) if path.is_file()
        }
    (bundle_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
