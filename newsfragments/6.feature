A benchmark against nginx and HAProxy (`bench/run.py`), an opt-in faster reactor (`twistd --reactor=balancebeam-epoll`), and support for running on PyPy, where balancebeam matches nginx's throughput.
