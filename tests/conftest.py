"""Fixtures shared by several test modules."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and a shared, loaded machine makes multi-threaded tiny matmuls
    spin (measured 50x slower); the setting is restored for other test modules. Use it per module with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _on_one_thread(make, path):
    """make(path) with torch on one thread (a run trained the same way wherever the tests run), threads restored."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return make(path)
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tool_run(tmp_path_factory):
    """A tiny chat run trained in seconds to call the calculator (tests/tool_util.py); shared by the server's tool
    tests and the agent's."""
    from tool_util import make_tool_run

    return _on_one_thread(make_tool_run, tmp_path_factory.mktemp("tool_run"))


@pytest.fixture(scope="session")
def chat_run(tmp_path_factory):
    """A tiny chat run (debug preset, objective sft) trained in seconds to answer tests/serve_util.py's CHATS;
    shared by the serving, web page and schema fuzzing tests."""
    from serve_util import make_chat_run

    return _on_one_thread(make_chat_run, tmp_path_factory.mktemp("chat_run"))
