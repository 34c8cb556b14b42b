"""A small full-screen installer: pick a database engine with the arrow keys, type a port,
confirm. It writes app.conf only when it runs on a terminal and every answer was given."""

import curses
import sys

ENGINES = ["sqlite", "postgres", "mysql"]


def ask_engine(scr):
    chosen = 0
    while True:
        scr.erase()
        scr.addstr(0, 0, "Example App installer (step 1 of 3)")
        scr.addstr(2, 0, "Database engine (Up/Down, Enter):")
        for i, name in enumerate(ENGINES):
            scr.addstr(4 + i, 2, ("> " if i == chosen else "  ") + name)
        scr.refresh()
        key = scr.getch()
        if key == curses.KEY_UP:
            chosen = (chosen - 1) % len(ENGINES)
        elif key == curses.KEY_DOWN:
            chosen = (chosen + 1) % len(ENGINES)
        elif key in (curses.KEY_ENTER, 10, 13):
            return ENGINES[chosen]


def ask_port(scr, engine):
    while True:
        scr.erase()
        scr.addstr(0, 0, "Example App installer (step 2 of 3)")
        scr.addstr(2, 0, f"Engine: {engine}")
        scr.addstr(4, 0, "Port: ")
        scr.refresh()
        curses.echo()
        text = scr.getstr(4, 6, 5).decode(errors="replace").strip()
        curses.noecho()
        if text.isdigit() and 0 < int(text) < 65536:
            return int(text)


def confirm(scr, engine, port):
    scr.erase()
    scr.addstr(0, 0, "Example App installer (step 3 of 3)")
    scr.addstr(2, 0, f"Engine: {engine}")
    scr.addstr(3, 0, f"Port:   {port}")
    scr.addstr(5, 0, "Write app.conf? [y/n]")
    scr.refresh()
    while True:
        key = scr.getch()
        if key in (ord("y"), ord("Y")):
            return True
        if key in (ord("n"), ord("N")):
            return False


def main(scr):
    curses.curs_set(0)
    scr.keypad(True)
    engine = ask_engine(scr)
    port = ask_port(scr, engine)
    if confirm(scr, engine, port):
        with open("app.conf", "w") as fh:
            fh.write(f"# written by installer.py\nengine = {engine}\nport = {port}\n")
        return True
    return False


if __name__ == "__main__":
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        sys.exit("installer.py is interactive: run it on a terminal")
    written = curses.wrapper(main)
    print("app.conf written." if written else "Nothing written.")
