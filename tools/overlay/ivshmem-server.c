// SPDX-License-Identifier: GPL-2.0
/*
 * ivshmem-server SOCKET SIZE: the smallest server an ivshmem-doorbell
 * device in the test VM needs (Debian's QEMU does not ship QEMU's
 * ivshmem-server). It serves one client: the protocol version, the
 * client's ID and the shared memory (a memfd of SIZE bytes), as
 * QEMU's docs/specs/ivshmem-spec.rst describes, then keeps the connection
 * open until it is killed. No interrupts are set up: the test only needs
 * the device to exist.
 */
#define _GNU_SOURCE
#include <endian.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void die(const char *what)
{
	fprintf(stderr, "ivshmem-server: %s: %s\n", what, strerror(errno));
	exit(1);
}

/* Send the little-endian 64-bit @value, with @fd attached if it is not -1. */
static void send_msg(int sock, int64_t value, int fd)
{
	char control[CMSG_SPACE(sizeof(int))] = { 0 };
	int64_t le = (int64_t)htole64((uint64_t)value);
	struct iovec iov = { .iov_base = &le, .iov_len = sizeof(le) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct cmsghdr *cmsg;

	if (fd >= 0) {
		msg.msg_control = control;
		msg.msg_controllen = sizeof(control);
		cmsg = CMSG_FIRSTHDR(&msg);
		cmsg->cmsg_level = SOL_SOCKET;
		cmsg->cmsg_type = SCM_RIGHTS;
		cmsg->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
	}
	if (sendmsg(sock, &msg, 0) != sizeof(le))
		die("sendmsg");
}

int main(int argc, char **argv)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	int lsock, sock, shm;
	long long size;

	if (argc != 3 || strlen(argv[1]) >= sizeof(addr.sun_path)) {
		fprintf(stderr, "usage: ivshmem-server SOCKET SIZE\n");
		return 2;
	}
	size = strtoll(argv[2], NULL, 0);
	shm = memfd_create("ivshmem", MFD_CLOEXEC);
	if (shm < 0 || ftruncate(shm, size))
		die("shared memory");
	strcpy(addr.sun_path, argv[1]);
	unlink(addr.sun_path);
	lsock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lsock < 0 || bind(lsock, (struct sockaddr *)&addr, sizeof(addr)) ||
	    listen(lsock, 1))
		die(addr.sun_path);
	sock = accept(lsock, NULL, NULL);
	if (sock < 0)
		die("accept");
	send_msg(sock, 0, -1);	/* protocol version */
	send_msg(sock, 0, -1);	/* the client's ID */
	send_msg(sock, -1, shm);	/* the shared memory */
	for (;;)
		pause();
}
