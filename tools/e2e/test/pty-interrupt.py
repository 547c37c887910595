# Runs a command in a pseudo-terminal, as a user's terminal does, and types
# Ctrl-C once its output contains a marker. Prints the exit status and what
# the terminal showed, as JSON. Usage: python3 pty-interrupt.py MARKER CMD ARG...
import json, os, pty, select, sys, time

marker = sys.argv[1].encode()
pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
seen = b''
sent = False
deadline = time.time() + 60
while time.time() < deadline:
    r, _, _ = select.select([fd], [], [], 0.1)
    if r:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    if not sent and marker in seen:
        os.write(fd, b'\x03')  # the terminal turns this into SIGINT for the foreground process group
        sent = True
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
print(json.dumps({'status': code, 'sent': sent, 'output': seen.decode('utf8', 'replace')}))
