"""Every ptynb app through Panel's Jupyter preview on Binder (no ``panel serve`` needed).

Open ``<binder-url>/panel-preview/render/binder/app.py?app=<name>`` with ``<name>`` one of
``ptynb.apps.app_entries()`` (explorer, stereo, mspt, adept, apt, ...); without ``app`` the page
lists them. The apps compute only when asked (a Run button), so the preview appears at once;
a notebook viewed the same way runs all its cells first and Panel gives up after 60 s.
"""
import panel as pn

from ptynb.apps import app_entries, build, use_inline_resources

use_inline_resources()  # JavaScript from the installed packages: no CDN
entries = app_entries()
name = pn.state.session_args.get("app", [b""])[0].decode()
if name in entries:
    build(name).servable(title=f"ptynb {name}")
else:
    links = "\n".join(f"- [{title}](?app={slug})" for slug, (title, _, _) in entries.items())
    note = f"No app called `{name}`.\n\n" if name else ""
    pn.pane.Markdown(f"# ptynb apps\n{note}{links}").servable(title="ptynb apps")
