/*
 * containerd-shim-zeropod-v2: the fast path of `start`, in front of the Python shim.
 *
 * containerd runs `<shim> ... start` on every container start and waits for it. In Python
 * that call alone costs ~30 ms (interpreter, site, imports). When a warm shim template runs
 * (see zeropod_core/shim/template.py), all `start` has to do is create the shim's socket, hand
 * it to the template and print the address: this program does exactly that, speaking the
 * template's request format, and hands everything else to the Python implementation
 * (`python -m zeropod_core.shim.main`): other actions, containers grouped with a pod sandbox,
 * long socket paths, no template yet, a template that refuses, any error.
 *
 * PYTHON and IDENTITY are fixed at build time (scripts/build): the venv's interpreter and the
 * identity string the template checks (interpreter | package folder).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef PYTHON
#error "build with -DPYTHON=\"/path/to/venv/bin/python\""
#endif
#ifndef IDENTITY
#error "build with -DIDENTITY=\"<template identity>\""
#endif

#define MAX_SOCKET_PATH 100
extern char **environ;

static char **g_argv;

static void python(void) {
	/* argv for: python -m zeropod_core.shim.main <original args> */
	int argc = 0;
	while (g_argv[argc])
		argc++;
	char **args = calloc(argc + 3, sizeof(char *));
	if (!args)
		_exit(70);
	args[0] = PYTHON;
	args[1] = "-m";
	args[2] = "zeropod_core.shim.main";
	for (int i = 1; i < argc; i++)
		args[i + 2] = g_argv[i];
	execv(PYTHON, args);
	fprintf(stderr, "containerd-shim-zeropod-v2: exec %s: %s\n", PYTHON, strerror(errno));
	_exit(70);
}

static const char *flag(int argc, char **argv, const char *name) {
	size_t n = strlen(name);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (a[0] != '-')
			continue;
		a += (a[1] == '-') ? 2 : 1;
		if (strncmp(a, name, n) == 0) {
			if (a[n] == '=')
				return a + n + 1;
			if (a[n] == '\0' && i + 1 < argc)
				return argv[i + 1];
		}
	}
	return NULL;
}

static int has_switch(int argc, char **argv, const char *name) {
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (a[0] != '-')
			continue;
		a += (a[1] == '-') ? 2 : 1;
		if (strcmp(a, name) == 0 || (strncmp(a, name, strlen(name)) == 0 &&
					      strcmp(a + strlen(name), "=true") == 0))
			return 1;
	}
	return 0;
}

/* 1 if the bundle's config.json names a sandbox or group: the Python path handles those */
static int grouped(void) {
	FILE *f = fopen("config.json", "r");
	if (!f)
		return 0;
	static char buf[1 << 20];
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	int big = !feof(f);
	fclose(f);
	buf[n] = 0;
	return big || strstr(buf, "io.kubernetes.cri.sandbox-id") ||
	       strstr(buf, "io.containerd.runc.v2.group");
}

static int connect_unix(const char *path) {
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(sa.sun_path))
		return -1;
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static int write_file(const char *path, const char *text) {
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -1;
	ssize_t len = (ssize_t)strlen(text);
	int ok = write(fd, text, len) == len;
	close(fd);
	return ok ? 0 : -1;
}

/* append s and a NUL separator (except before the first field) */
static int append(char **buf, size_t *len, size_t *cap, const char *s, int first) {
	size_t n = strlen(s) + 1;
	if (*len + n + 1 > *cap) {
		*cap = (*len + n + 1) * 2;
		char *grown = realloc(*buf, *cap);
		if (!grown)
			return -1;
		*buf = grown;
	}
	if (!first)
		(*buf)[(*len)++] = '\0';
	memcpy(*buf + *len, s, n - 1);
	*len += n - 1;
	return 0;
}

int main(int argc, char **argv) {
	g_argv = argv;
	if (argc < 2 || strcmp(argv[argc - 1], "start") != 0)
		python();
	const char *template_env = getenv("ZEROPOD_SHIM_TEMPLATE");
	if (template_env && strcmp(template_env, "0") == 0)
		python();
	const char *ns = flag(argc, argv, "namespace"), *address = flag(argc, argv, "address");
	const char *id = flag(argc, argv, "id");
	const char *publish = flag(argc, argv, "publish-binary");
	if (!ns || !address || !id || strchr(id, '/') || grouped())
		python();
	char folder[PATH_MAX], path[PATH_MAX], template[PATH_MAX], bundle[PATH_MAX];
	if (!getcwd(bundle, sizeof(bundle)))
		python();
	const char *slash = strrchr(address, '/');
	int dirlen = slash ? (int)(slash - address) : 0;
	if (snprintf(folder, sizeof(folder), "%.*s/s", dirlen, address) >= MAX_SOCKET_PATH ||
	    snprintf(path, sizeof(path), "%s/zeropod-%s-%s", folder, ns, id) > MAX_SOCKET_PATH ||
	    snprintf(template, sizeof(template), "%s/zeropod-template.sock", folder) >=
		    MAX_SOCKET_PATH)
		python(); /* too long for a socket address: the Python path hashes the name */

	int conn = connect_unix(template);
	if (conn < 0)
		python(); /* no template yet: the Python start starts one */

	char address_line[PATH_MAX + 8];
	snprintf(address_line, sizeof(address_line), "unix://%s", path);
	int existing = connect_unix(path);
	if (existing >= 0) { /* the shim already runs: reuse it */
		close(existing);
		close(conn);
		if (write_file("address", address_line) < 0)
			python();
		fputs(address_line, stdout);
		return 0;
	}
	unlink(path);
	mkdir(folder, 0711);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	strcpy(sa.sun_path, path);
	int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (listener < 0 || bind(listener, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    chmod(path, 0600) < 0 || listen(listener, 128) < 0 ||
	    write_file("address", address_line) < 0)
		goto fallback;

	/* the request: identity, bundle, debug, namespace, address, publish_binary, id, bundle
	 * flag, socket, then environment key/value pairs, all NUL-separated */
	char *body = NULL;
	size_t len = 0, cap = 0;
	const char *fields[] = {IDENTITY, bundle, has_switch(argc, argv, "debug") ? "1" : "0",
				ns, address, publish ? publish : "", id, "", path};
	for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
		if (append(&body, &len, &cap, fields[i], i == 0) < 0)
			goto fallback;
	for (char **e = environ; *e; e++) {
		char *eq = strchr(*e, '=');
		if (!eq)
			continue;
		*eq = '\0';
		int failed = append(&body, &len, &cap, *e, 0) < 0 ||
			     append(&body, &len, &cap, eq + 1, 0) < 0;
		*eq = '=';
		if (failed)
			goto fallback;
	}
	uint8_t header[4] = {len >> 24, len >> 16, len >> 8, len};
	struct iovec iov[2] = {{header, 4}, {body, len}};
	char control[CMSG_SPACE(sizeof(int))] = {0};
	struct msghdr msg = {.msg_iov = iov, .msg_iovlen = 2, .msg_control = control,
			     .msg_controllen = sizeof(control)};
	struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
	cmsg->cmsg_level = SOL_SOCKET;
	cmsg->cmsg_type = SCM_RIGHTS;
	cmsg->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cmsg), &listener, sizeof(int));
	ssize_t sent = sendmsg(conn, &msg, MSG_NOSIGNAL);
	if (sent < 0 || (size_t)sent != len + 4)
		goto fallback;
	/* a large environment may not fit one sendmsg: that is rare, and the fallback copes */
	char reply[16] = {0};
	ssize_t got = recv(conn, reply, sizeof(reply) - 1, 0);
	if (got < 2 || strncmp(reply, "ok", 2) != 0)
		goto fallback;
	close(conn);
	close(listener);
	fputs(address_line, stdout);
	return 0;

fallback:
	if (listener >= 0)
		close(listener);
	close(conn);
	unlink(path);
	python();
	return 70;
}
