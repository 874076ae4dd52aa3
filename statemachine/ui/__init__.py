"""`statemachine ui`: a small web viewer of stored runs (Starlette + uvicorn, no build step).

    from statemachine.ui import create_app
    app = create_app("runs.db", graph=None, allow_actions=False)   # an ASGI application

Read-only unless `allow_actions`: the database is opened with SQLite's read-only mode and the
Resume/Rollback endpoints answer 403.
"""

from .server import Viewer, create_app

__all__ = ["Viewer", "create_app"]
