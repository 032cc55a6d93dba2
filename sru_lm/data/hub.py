"""The one place that loads a data set from the Hugging Face hub, with a clear offline error."""

from __future__ import annotations

from datasets import DatasetDict


class HubUnavailableError(RuntimeError):
    """The hub could not provide a data set (offline, or a wrong name)."""


def load_hub_dataset(name: str, config: str | None = None, *, offline_hint: str = "", **kwargs) -> DatasetDict:
    """``datasets.load_dataset(name, config, **kwargs)``; any failure becomes a ``HubUnavailableError``.

    The message names the data set, the underlying error, and ``offline_hint`` (the offline data
    that can be used instead).
    """
    import datasets

    try:
        return datasets.load_dataset(name, config, **kwargs)
    except Exception as e:  # noqa: BLE001 - offline, the hub client raises many different types
        raise HubUnavailableError(
            f"could not load hub dataset {name!r} (config {config!r}): {type(e).__name__}: {e}\n"
            "The hub is unreachable (no network, or HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set without a "
            "cached copy) or the name is wrong."
            + (f"\nOffline instead: {offline_hint}" if offline_hint else "")
        ) from e
