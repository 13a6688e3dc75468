// SPDX-License-Identifier: GPL-2.0
/*
 * hmp SOCKET COMMAND...: run HMP commands on a QEMU monitor listening on a
 * unix socket (-monitor unix:SOCKET,server,nowait) and print its output
 * without the echo, the prompt and terminal escapes. Each COMMAND argument is
 * one command, run in order in the same session. Gives up after $HMP_TIMEOUT
 * seconds (default 20) with exit status 2, so a hung QEMU fails one check.
 * "quit" ends the session (QEMU closes the monitor instead of prompting).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define PROMPT "(qemu) "

static char buf[1 << 20];
static size_t len;

static void on_alarm(int sig)
{
	(void)sig;
	fprintf(stderr, "hmp: timed out\n");
	_exit(2);
}

/* Read until the output ends with the prompt. */
static int read_prompt(int fd)
{
	size_t pl = strlen(PROMPT);
	ssize_t n;

	len = 0;
	for (;;) {
		if (len >= pl && !memcmp(buf + len - pl, PROMPT, pl))
			return 0;
		if (len == sizeof(buf) - 1)
			return -1;
		n = read(fd, buf + len, sizeof(buf) - 1 - len);
		if (n <= 0)
			return -1;
		len += n;
	}
}

/* Print BUF minus the echoed first line, the prompt, CRs and escapes. */
static void print_output(void)
{
	char *p = memchr(buf, '\n', len), *end = buf + len - strlen(PROMPT);

	for (p = p ? p + 1 : end; p < end; p++) {
		if (*p == '\r')
			continue;
		if (*p == 0x1b) {
			/* ESC [ params letter */
			if (p + 1 < end && p[1] == '[')
				for (p += 2; p < end && !((*p | 0x20) >= 'a' && (*p | 0x20) <= 'z'); p++)
					;
			continue;
		}
		putchar(*p);
	}
}

int main(int argc, char **argv)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	const char *t = getenv("HMP_TIMEOUT");
	int fd, i;

	if (argc < 3) {
		fprintf(stderr, "usage: hmp SOCKET COMMAND...\n");
		return 1;
	}
	signal(SIGALRM, on_alarm);
	alarm(t ? atoi(t) : 20);
	strncpy(sa.sun_path, argv[1], sizeof(sa.sun_path) - 1);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
		perror("hmp: connect");
		return 2;
	}
	if (read_prompt(fd)) {
		fprintf(stderr, "hmp: no monitor prompt\n");
		return 2;
	}
	for (i = 2; i < argc; i++) {
		if (dprintf(fd, "%s\n", argv[i]) < 0)
			return 2;
		if (read_prompt(fd)) {
			/* quit closes the monitor instead of prompting */
			if (!strcmp(argv[i], "quit"))
				return 0;
			fprintf(stderr, "hmp: '%s': monitor closed\n", argv[i]);
			return 2;
		}
		print_output();
	}
	fflush(stdout);
	return 0;
}
