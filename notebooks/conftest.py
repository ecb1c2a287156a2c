"""pytest (nbval) of the notebooks: a notebook's cells run in order in one kernel, so under
``pytest -n N --dist loadgroup`` (scripts/test.sh) all of them go to the same xdist worker."""
import pytest


@pytest.hookimpl(tryfirst=True)  # before xdist reads the marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        path = getattr(item, "path", None)
        if path is not None and path.suffix == ".ipynb":
            item.add_marker(pytest.mark.xdist_group(f"notebook-{path.stem}"))
