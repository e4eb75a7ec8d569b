"""Measures bench/README.md's original_step section: the original notebook's training step, as
it was, with random weights: python bench/original_step.py [--tiny] [--device cpu]

  original_step   a Dataset that decodes full-size PNGs with PIL every time (RGB, 224 px,
                  ImageNet Normalize), DataLoader batch 8 / 2 workers, a frozen BERT-base
                  forward on 512-token padded text inside every step, torchvision
                  EfficientNet-B1 fully fine-tuned + MLP head, Adam, fp32. Images/s with loading.

Alone it prints that section as one JSON object; bench/benchmark.py runs it too.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` and `cxrfusion`

# bench.common first: it sets environment defaults that must precede importing torch
from bench.common import LR, Inputs, Sizes, free_memory, log, main, make_inputs, peak_gib, sync

# isort: split
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class NotebookDataset(torch.utils.data.Dataset):
    """The notebook's Dataset: every item decodes the full PNG, converts it to RGB, resizes it
    and tokenises the report padded to the maximum length."""

    def __init__(self, paths, texts, labels, tokenizer, size: int, tokens: int):
        from torchvision import transforms as T

        self.paths, self.texts, self.labels = paths, texts, labels
        self.tokenizer, self.tokens = tokenizer, tokens
        self.transform = T.Compose([T.Resize((size, size)), T.ToTensor(),
                                    T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        with Image.open(self.paths[i % len(self.paths)]) as png:
            image = png.convert("RGB")
        enc = self.tokenizer(self.texts[i % len(self.texts)], padding="max_length", truncation=True,
                             max_length=self.tokens, return_tensors="pt")
        return (self.transform(image), enc["input_ids"][0], enc["attention_mask"][0],
                torch.tensor(self.labels[i]))


def notebook_model(bert_overrides: dict, device: torch.device):
    """Frozen BERT (eval), torchvision EfficientNet-B1 without classifier, the fusion head."""
    import torchvision
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(**bert_overrides)).to(device).eval().requires_grad_(False)
    cnn = torchvision.models.efficientnet_b1(weights=None)
    cnn.classifier = nn.Identity()
    head = nn.Sequential(nn.Linear(1280 + bert.config.hidden_size, 256), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(256, 2))
    return bert, cnn.to(device).train(), head.to(device).train()


def measure_original_step(s: Sizes, png_dir: Path, names: list[str], texts: list[str],
                          tokenizer, device: torch.device) -> dict:
    torch.backends.cudnn.benchmark = False  # the notebook set nothing: PyTorch's defaults
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    bert, cnn, head = notebook_model(s.notebook_bert, device)
    optimizer = torch.optim.Adam(list(cnn.parameters()) + list(head.parameters()), lr=LR)
    steps = s.notebook_warmup_steps + s.notebook_steps
    labels = np.random.default_rng(0).integers(0, 2, steps * s.notebook_batch)
    data = NotebookDataset([png_dir / n for n in names], texts, labels, tokenizer,
                           s.notebook_size, s.notebook_tokens)
    loader = torch.utils.data.DataLoader(data, batch_size=s.notebook_batch, shuffle=True,
                                         num_workers=s.notebook_workers, drop_last=True)

    def step(images, ids, mask, y):
        images, ids, mask, y = images.to(device), ids.to(device), mask.to(device), y.to(device)
        with torch.no_grad():
            text = bert(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        logits = head(torch.cat([cnn(images), text], 1))
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    free_memory(device)
    for i, batch in enumerate(loader):
        if i == s.notebook_warmup_steps:
            sync(device)
            start = time.perf_counter()
        step(*batch)
    sync(device)
    seconds = time.perf_counter() - start
    images = s.notebook_steps * s.notebook_batch
    log.info("original_step: %d images in %.1f s: %.1f images/s", images, seconds, images / seconds)
    return {"images_per_s": images / seconds, "images_timed": images, "seconds": seconds,
            "batch_size": s.notebook_batch, "workers": s.notebook_workers,
            "image_size": s.notebook_size, "png_size": s.png_size, "text_tokens": s.notebook_tokens,
            "bert_hidden": bert.config.hidden_size, "bert_layers": bert.config.num_hidden_layers,
            "peak_gib": peak_gib(device)}


def measure_section(s: Sizes, inputs: Inputs, device: torch.device) -> dict:
    """original_step with the run's PNGs, reports and the encoder's tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(inputs.encoder)
    return measure_original_step(s, inputs.png_dir, inputs.names, inputs.texts, tokenizer, device)


# --- alone -----------------------------------------------------------------------------------

def measure(s: Sizes, device: torch.device, result: dict, work: Path, args) -> None:
    result["original_step"] = measure_section(s, make_inputs(s, work, result), device)


if __name__ == "__main__":
    main("original_step", __doc__.split("\n\n")[0], measure)
