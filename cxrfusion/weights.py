"""Which weights a frozen encoder is: the one fingerprint of the text and image encoders' caches.

A local folder is named by a content hash of its files (names and bytes); weights from the hub
by the commit they were downloaded at. A cache records it, so a model trained on the vectors of
one encoder is never fed another's (cxrfusion/text_encoder.py, cxrfusion/image_encoder.py).
"""
from __future__ import annotations

import hashlib
from pathlib import Path


def fingerprint(name: str, model) -> str:
    """`sha256:<hex>` of the folder `name`, else `commit:<hash>` of the hub weights `model`
    was loaded from (`unknown` when transformers recorded none)."""
    folder = Path(name)
    if folder.is_dir():
        digest = hashlib.sha256()
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(f.relative_to(folder).as_posix().encode())
            digest.update(f.read_bytes())
        return "sha256:" + digest.hexdigest()
    return "commit:" + str(getattr(model.config, "_commit_hash", None) or "unknown")
