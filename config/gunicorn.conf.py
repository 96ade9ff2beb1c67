"""gunicorn's configuration for careloop's web process: the Procfile's ``web`` runs
``gunicorn --config config/gunicorn.conf.py …``. Every value can be set from the environment
(the README's configuration table); a command-line option overrides the file.

Not a module of the package (gunicorn reads it by path): the code it plugs in lives in
``careloop.service.serving``.
"""

import os
import shutil
import tempfile

# Metrics of every worker process (prometheus-client's multiprocess mode): each writes its
# values into PROMETHEUS_MULTIPROC_DIR, read before the client is first imported (below).
# Unset, a private folder is made for this server and removed when it stops; set it (the
# same for `careloop worker` on this machine) so the workers' counts are served too.
_made_metrics_dir = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _made_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="careloop-metrics-")

from careloop.service import serving  # noqa: E402 (after the metrics folder is chosen)

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
access_log_format = serving.ACCESS_LOG_FORMAT
logger_class = "careloop.service.serving.Logger"  # JSON lines unless CARELOOP_LOG_FORMAT=text
# gunicorn's control socket is one path per user ($HOME/.gunicorn/gunicorn.ctl): two servers
# on one machine would take it from each other. careloop is run by its Procfile and signals.
control_socket_disable = True

# In the master, before any worker forks: careloop's log lines, then the database migrations.
on_starting = serving.on_starting
post_worker_init = serving.post_worker_init
child_exit = serving.child_exit  # a dead worker's live metric values are dropped


def on_exit(server) -> None:
    if _made_metrics_dir:
        shutil.rmtree(_made_metrics_dir, ignore_errors=True)
