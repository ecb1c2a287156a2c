"""The getting-started explorer as a Panel app for Panel's Jupyter preview on Binder:
open ``<binder-url>/panel-preview/render/binder/explorer_app.py``."""
from ptynb.apps import build

build("explorer").servable(title="ptynb explorer")
