"""PNG figures of a run: learning curves and the confusion matrix.

matplotlib is imported inside the functions (it is slow to import) and used through its
object-oriented API with the Agg canvas: no pyplot, no global backend switch, no display needed.
Figures are written atomically (:func:`fastfm.files.atomic_writer`), so a reader never sees half a
PNG and a crash never leaves one.
"""

from __future__ import annotations

from pathlib import Path

from ...files import atomic_writer


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path, metadata: dict | None = None) -> None:
    """``fig`` as a PNG at ``path``, atomically; ``metadata``: PNG text entries (e.g. "Software")."""
    with atomic_writer(path) as f:
        fig.savefig(f, format="png", metadata=metadata)


def plot_curves(records: list[dict], path: str | Path) -> None:
    """``curves.png``: train/test loss, test accuracy (and EMA), learning rate, against epochs.

    ``records``: the rows of ``metrics.jsonl``; keys that are missing or null are skipped.
    """
    fig = _figure(13, 3.8)
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)

    def series(key):
        pts = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    # Markers while the curves are short: the plot is rewritten after every evaluation, and a line
    # through one point (the first epoch) draws nothing.
    style = {"marker": "."} if len(records) <= 60 else {}
    for key, label in (("train_loss", "train"), ("test_loss", "test"), ("test_loss_ema", "test (EMA)")):
        x, y = series(key)
        if x:
            ax_loss.plot(x, y, label=label, **style)
    for key, label in (("test_acc", "test"), ("test_acc_ema", "test (EMA)")):
        x, y = series(key)
        if x:
            ax_acc.plot(x, [100 * v for v in y], label=label, **style)
    x, y = series("lr")
    ax_lr.plot(x, y, **style)
    from matplotlib.ticker import MaxNLocator

    for ax, title in ((ax_loss, "loss"), (ax_acc, "test accuracy (%)"), (ax_lr, "learning rate (end of epoch)")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))   # whole epochs
        if records:
            ax.set_xlim(0.5, max(r["epoch"] for r in records) + 0.5)
        ax.grid(alpha=0.3)
    ax_loss.legend()
    ax_acc.legend()
    fig.tight_layout()
    _save(fig, path)


def plot_confusion(confusion: list[list[int]], classes: tuple[str, ...], path: str | Path, title: str) -> None:
    """``confusion.png``: counts, coloured by the row-normalised rate (rows: true class)."""
    fig = _figure(7.5, 6.5)
    ax = fig.subplots()
    rates = [[c / max(1, sum(row)) for c in row] for row in confusion]
    im = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    n = len(classes)
    for t in range(n):
        for p in range(n):
            ax.text(p, t, str(confusion[t][p]), ha="center", va="center", fontsize=7,
                    color="white" if rates[t][p] > 0.5 else "black")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save(fig, path)
