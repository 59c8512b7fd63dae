"""Graceful shutdown for a Django project: add ``"lastcall.django"`` to ``INSTALLED_APPS``.

That is all. The app's ``ready()`` puts :class:`lastcall.django.middleware.
LastCallMiddleware` first in ``settings.MIDDLEWARE`` (Django reads that list
when the handler is built, after ``django.setup()``), so ``/livez`` and
``/readyz`` are answered before URL routing, and requests in flight are
counted, whatever server runs the project's own ``wsgi.py`` or ``asgi.py``.
Under ``manage.py runserver`` (with and without the autoreloader) the
server itself stops the lastcall way: see ``lastcall._servers.django``.
Under gunicorn use ``-c python:lastcall.gunicorn``; under waitress
``lastcall.waitress``.

Settings (all optional; a value of the wrong type stops start-up with one
``ImproperlyConfigured`` line):

===============================  =========  ======================================
setting                          default    meaning
===============================  =========  ======================================
``LASTCALL_GRACE``               ``None``   seconds for the whole stop (25)
``LASTCALL_PRESTOP_DELAY``       ``None``   seconds to keep serving once /readyz is red (0)
``LASTCALL_REPORT``              ``None``   path of the JSON report, ``{pid}`` expands
``LASTCALL_LIVEZ_PATH``          "/livez"   liveness endpoint; ``None`` switches it off
``LASTCALL_READYZ_PATH``         "/readyz"  readiness endpoint; ``None`` switches it off
``LASTCALL_CLOSE_DB``            ``True``   close Django's database connections in ``cleanup``
===============================  =========  ======================================

``None`` for a timing setting means "the ``LASTCALL_*`` environment
variable, else lastcall's default", as for the Flask config keys.
"""
