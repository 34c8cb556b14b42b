import os

import pytest

from rollout.policy.template import load_tokenizer
from tests.agent_support import QWEN_TOKENIZER
from tests.policy.fake_servers import FakeModelServer

# Point these at another completions server (e.g. the embedded policy server) and its
# tokenizer to run the token-exactness tests against it instead of the in-test server.
EXTERNAL_URL = os.environ.get("ROLLOUT_TEST_COMPLETIONS_URL", "")
TOKENIZER = os.environ.get("ROLLOUT_TEST_TOKENIZER", QWEN_TOKENIZER)


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(TOKENIZER)


@pytest.fixture
async def fake_server(tokenizer):
    server = FakeModelServer(tokenizer, tool_turns=3, seed=7)
    await server.start()
    yield server
    await server.stop()
