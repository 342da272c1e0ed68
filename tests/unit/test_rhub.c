/* Unit tests for what rhub.c parses without a Redis: --redis URLs, and
 * event ids ("MS-SEQ", packed so that they compare as integers). */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "rhub.h"
#include "unit.h"

static void test_urls(void) {
  rhub_config_t c;
  char err[256];
  CHECK(rhub_parse_url("redis://127.0.0.1", &c, err, sizeof(err)) == 0);
  CHECK(strcmp(c.host, "127.0.0.1") == 0 && c.port == 6379 && c.db == 0 && c.password[0] == '\0');
  CHECK(rhub_parse_url("redis://cache.internal:6380/3", &c, err, sizeof(err)) == 0);
  CHECK(strcmp(c.host, "cache.internal") == 0 && c.port == 6380 && c.db == 3);
  CHECK(rhub_parse_url("redis://:s3cret@10.0.0.7:7000/", &c, err, sizeof(err)) == 0);
  CHECK(strcmp(c.host, "10.0.0.7") == 0 && c.port == 7000 && c.db == 0);
  CHECK(strcmp(c.password, "s3cret") == 0);
  CHECK(rhub_parse_url("redis://user:pw@h", &c, err, sizeof(err)) == 0);
  CHECK(strcmp(c.password, "pw") == 0 && strcmp(c.host, "h") == 0);

  static const char *bad[] = {"http://h", "redis://", "redis://:6379", "redis://h:0",
                              "redis://h:65536", "redis://h:12x", "redis://h/x", "redis://h/1/2",
                              "h:6379", NULL};
  for (int i = 0; bad[i]; i++) {
    err[0] = '\0';
    CHECK(rhub_parse_url(bad[i], &c, err, sizeof(err)) == -EINVAL);
    CHECK(err[0] != '\0');
  }
}

static void test_ids(void) {
  uint64_t a, b;
  char buf[32];
  CHECK(rhub_parse_id("1700000000000-0", 15, &a) == 1);
  CHECK(rhub_parse_id("1700000000000-1", 15, &b) == 1);
  CHECK(a < b);
  CHECK(rhub_parse_id("1700000000001-0", 15, &b) == 1);
  CHECK(a < b);
  CHECK(rhub_format_id(a, buf) == 15);
  CHECK(strcmp(buf, "1700000000000-0") == 0);
  CHECK(rhub_parse_id("1700000000000-4194303", 21, &a) == 1);
  CHECK(a < b); /* the last SEQ of a millisecond is below the next one */
  CHECK(rhub_format_id(a, buf) == 21 && strcmp(buf, "1700000000000-4194303") == 0);
  CHECK(rhub_parse_id("0", 1, &a) == 1 && a == 0); /* older than every id */
  CHECK(rhub_parse_id("1700000000000", 13, &a) == 1);
  CHECK(rhub_parse_id("1700000000000-0", 15, &b) == 1 && a == b);
  /* A microsecond id of the in-memory hub is far past any Redis clock. */
  CHECK(rhub_parse_id("1732190000000123", 16, &a) == 0);
  static const char *bad[] = {"", "-", "12-", "-3", "1-2-3", "12-4194304", "a-1",
                              "1-a", "12 -1", "99999999999999999999-0", NULL};
  for (int i = 0; bad[i]; i++) CHECK(rhub_parse_id(bad[i], strlen(bad[i]), &a) == 0);
}

static void test_local_channels(void) {
  CHECK(rhub_local_channel("_sluice.reload", 14));
  CHECK(!rhub_local_channel("_sluice", 7));
  CHECK(!rhub_local_channel("chat", 4));
}

int main(void) {
  test_urls();
  test_ids();
  test_local_channels();
  UNIT_DONE();
}
