"""Writing a matplotlib figure as a PNG file whole or not at all, shared by tools/plot.py and
tools/quality_table.py."""
import os


def save_png(fig, path, dpi):
    """fig as the PNG `path`, written under a temporary name and renamed, so a failed write never
    leaves a half-written `path`; closes fig. Raises OSError when it cannot be written."""
    import matplotlib.pyplot as plt
    tmp = f"{path}.{os.getpid()}.partial"
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    except OSError:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    finally:
        plt.close(fig)
