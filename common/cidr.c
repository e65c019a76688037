/*
 * cidr — see cidr.h.
 */
#include "cidr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

int cidr_parse(const char *text, size_t len, struct cidr *out)
{
	char buf[INET6_ADDRSTRLEN + 5];
	const char *slash;
	unsigned bits, max;

	if (len == 0 || len >= sizeof(buf))
		return -1;
	memcpy(buf, text, len);
	buf[len] = '\0';
	memset(out, 0, sizeof(*out));
	slash = strchr(buf, '/');
	if (slash != NULL)
		buf[slash - buf] = '\0';
	if (inet_pton(AF_INET, buf, out->addr) == 1)
		out->family = AF_INET, max = 32;
	else if (inet_pton(AF_INET6, buf, out->addr) == 1)
		out->family = AF_INET6, max = 128;
	else
		return -1;
	bits = max;
	if (slash != NULL) {
		const char *d = slash + 1;
		if (*d == '\0' || strlen(d) > 3)
			return -1;
		bits = 0;
		for (; *d != '\0'; d++) {
			if (*d < '0' || *d > '9')
				return -1;
			bits = bits * 10 + (unsigned)(*d - '0');
		}
		if (bits > max)
			return -1;
	}
	out->bits = (uint8_t)bits;
	/* the bits past the prefix: zero, so that matching is a compare */
	for (unsigned i = bits; i < max; i++)
		out->addr[i / 8] &= (uint8_t) ~(0x80u >> (i % 8));
	return 0;
}

int cidr_list_parse(const char *list, struct cidr **out, size_t *n, const char **bad,
                    size_t *bad_len)
{
	size_t cap = 1, k = 0;
	const char *p = list;
	struct cidr *v;

	for (const char *q = list; *q != '\0'; q++)
		cap += *q == ',';
	v = calloc(cap, sizeof(*v));
	*out = NULL;
	*n = 0;
	*bad = NULL;
	*bad_len = 0;
	if (v == NULL)
		return -1;
	for (;;) {
		while (*p == ' ' || *p == '\t')
			p++;
		const char *e = p;
		while (*e != '\0' && *e != ',' && *e != ' ' && *e != '\t')
			e++;
		const char *after = e;
		while (*after == ' ' || *after == '\t')
			after++;
		if ((*after != ',' && *after != '\0') ||
		    cidr_parse(p, (size_t)(e - p), &v[k]) < 0) {
			/* the entry as written: up to its comma, less trailing blanks */
			const char *q = p;
			while (*q != '\0' && *q != ',')
				q++;
			while (q > p && (q[-1] == ' ' || q[-1] == '\t'))
				q--;
			*bad = p;
			*bad_len = (size_t)(q - p);
			free(v);
			return -1;
		}
		k++;
		if (*after == '\0')
			break;
		p = after + 1;
	}
	*out = v;
	*n = k;
	return 0;
}

bool cidr_match(const struct cidr *c, const struct sockaddr *sa)
{
	const uint8_t *a;
	int fam = sa->sa_family;

	if (fam == AF_INET) {
		a = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
	} else if (fam == AF_INET6) {
		a = (const uint8_t *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
		if (IN6_IS_ADDR_V4MAPPED((const struct in6_addr *)a)) {
			a += 12;
			fam = AF_INET;
		}
	} else {
		return false;
	}
	if (fam != c->family)
		return false;
	unsigned whole = c->bits / 8, rest = c->bits % 8;
	if (memcmp(a, c->addr, whole) != 0)
		return false;
	return rest == 0 || (a[whole] & (uint8_t)(0xffu << (8 - rest))) == c->addr[whole];
}

bool cidr_list_match(const struct cidr *list, size_t n, const struct sockaddr *sa)
{
	for (size_t i = 0; i < n; i++)
		if (cidr_match(&list[i], sa))
			return true;
	return false;
}
