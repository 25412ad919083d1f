With --workers, a worker whose event loop is stuck (silent for 10 s: an endless loop, SIGSTOP) is killed and replaced instead of starving its connections for good.
