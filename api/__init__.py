"""Haven's HTTP service: every request authenticated, decided by Casbin, audited, and answered
with no more than the caller's role may see. Build it with `api.app.create_app(settings)`."""
