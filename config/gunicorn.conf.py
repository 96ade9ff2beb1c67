"""gunicorn's configuration for careloop's web process: the Procfile's ``web`` runs
``gunicorn --config config/gunicorn.conf.py …``. Every value can be set from the environment
(the README's configuration table); a command-line option overrides the file.

Not a module of the package (gunicorn reads it by path): the code it plugs in lives in
``careloop.service.serving``.
"""

import os

from careloop.service import serving

wsgi_app = "careloop.service:create_app()"
bind = [f"0.0.0.0:{os.environ.get('PORT', '8000')}"]

# Threads, not one process per request: a connection waiting for its client's bytes holds a
# thread for at most WEB_READ_TIMEOUT seconds and never the worker, which keeps beating (so
# gunicorn never kills it, nor the embedded queue inside it).
worker_class = "careloop.service.serving.ThreadWorker"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "8"))
serving.read_timeout()  # WEB_READ_TIMEOUT, checked here so a bad value stops the start

timeout = 30  # a worker whose main loop stops beating this long is restarted
graceful_timeout = 30  # SIGTERM: the requests in hand may finish for this long
keepalive = 5

accesslog = "-"
# gunicorn's control socket is one path per user ($HOME/.gunicorn/gunicorn.ctl): two servers
# on one machine would take it from each other. careloop is run by its Procfile and signals.
control_socket_disable = True

# In the master, before any worker forks: careloop's log lines, then the database migrations.
on_starting = serving.on_starting
post_worker_init = serving.post_worker_init
