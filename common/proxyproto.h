/*
 * proxyproto — parser for the PROXY protocol header (HAProxy's
 * proxy-protocol.txt, versions 1 and 2) that a load balancer sends before
 * the first byte of the client's own stream.
 *
 *   v1  "PROXY TCP4 192.0.2.1 198.51.100.2 56324 993\r\n"     text, <= 107 bytes
 *       "PROXY UNKNOWN ...anything but CR or LF...\r\n"
 *   v2  sig[12] ver|cmd fam|proto len[2] | addresses | TLVs...  binary, 16 + len
 *       sig = \r\n\r\n\0\r\nQUIT\n
 *
 * Stateless and incremental: the caller presents everything received so far
 * (the same prefix each time, with more appended) until the answer is not
 * -2. Bytes after the header belong to the client's stream (IMAP, or a TLS
 * ClientHello) and are never looked at.
 *
 * Decisions beyond the spec's text:
 *   - v1 is strict: single spaces, no leading zeros in ports or IPv4
 *     octets, addresses of the family the keyword names (inet_pton), CRLF.
 *     UNKNOWN may be followed by a space and any bytes except CR and LF.
 *   - v2 family/protocol byte: only the seven combinations the spec lists
 *     (0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32); other values are invalid.
 *     LOCAL ignores it and the whole address block. With PROXY: TCP over
 *     IPv4/IPv6 gives the addresses; UNSPEC (0x00) and UNIX stream (0x31)
 *     are accepted as AF_UNSPEC (use the real endpoints: a peer that is a
 *     local socket says nothing useful about the client); datagram
 *     transports (0x12, 0x22, 0x32) are refused, an IMAP connection is a
 *     stream.
 *   - v2 address block plus TLVs: at most PROXYPROTO_V2_MAX_LEN bytes, and
 *     at least what the family needs (12, 36, 216). TLVs after the
 *     addresses are walked (each must fit in the block) and skipped; with
 *     LOCAL or UNSPEC the block is opaque and skipped whole.
 */
#ifndef IMAPMUX_PROXYPROTO_H
#define IMAPMUX_PROXYPROTO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Longest v1 line, CRLF included (the spec's worst case). */
#define PROXYPROTO_V1_MAX 107

/* Largest v2 length field accepted: addresses (at most 216) plus TLVs. */
#define PROXYPROTO_V2_MAX_LEN 1024

/* No header is longer than this: a caller never needs a bigger buffer. */
#define PROXYPROTO_MAX_HEADER (16 + PROXYPROTO_V2_MAX_LEN)

enum proxyproto_cmd {
	PROXYPROTO_CMD_LOCAL, /* v2 LOCAL: the proxy's own connection (health check) */
	PROXYPROTO_CMD_PROXY, /* relayed for a client: v1 always, v2 PROXY */
};

struct proxyproto_result {
	int version; /* 1 or 2 */
	enum proxyproto_cmd command;
	/*
	 * AF_INET or AF_INET6: src and dst hold the client's and the original
	 * destination's addresses and ports (sockaddr_in or sockaddr_in6,
	 * ports in network order). AF_UNSPEC (v1 UNKNOWN, v2 LOCAL, v2 UNSPEC
	 * or AF_UNIX): use the connection's real endpoints; src and dst are
	 * zeroed.
	 */
	int family;
	struct sockaddr_storage src;
	struct sockaddr_storage dst;
};

/*
 * Look for a complete header at p[0..len).
 * Returns:
 *    0  a valid header of *consumed_r bytes; *r filled.
 *   -2  the bytes are a valid beginning of a header: read more and call
 *       again with the same bytes and more appended (len 0 is -2 too).
 *       Never after PROXYPROTO_MAX_HEADER bytes.
 *   -1  invalid, decided as soon as the bytes prove it (the first byte
 *       already, if it is neither 'P' nor '\r'); *err_r is a short static
 *       reason for a log line.
 * Outputs are written only for the matching return value. Reads nothing
 * at or after p + len; allocates nothing.
 */
__attribute__((warn_unused_result)) int proxyproto_parse(const uint8_t *p, size_t len,
                                                         struct proxyproto_result *r,
                                                         size_t *consumed_r, const char **err_r);

/* Longest header proxyproto_build writes (v1 TCP6 with both ports). */
#define PROXYPROTO_BUILD_MAX PROXYPROTO_V1_MAX

/*
 * Write the header a proxy sends before a client's stream (version 1 or 2):
 * from src_ip:sport (the client) to dst_ip:dport (where it connected),
 * numeric IPv4 or IPv6 text; an IPv4 address beside an IPv6 one is sent as
 * IPv4-mapped IPv6, since both must be of one family. src_ip NULL: the
 * proxy's own connection (v1 "PROXY UNKNOWN", v2 LOCAL). Returns the length
 * written to out (at most PROXYPROTO_BUILD_MAX), or -1 when an address does
 * not parse or out is too small.
 */
int proxyproto_build(int version, const char *src_ip, unsigned sport, const char *dst_ip,
                     unsigned dport, uint8_t *out, size_t outlen);

#endif
