/* shmring-read: a second, independent implementation of a shmring reader, in C11 and libc.
 *
 *     shmring-read [--no-hash] [--owner UID] NAME COUNT
 *
 * Attaches to ring NAME (/dev/shm/shmring.NAME) if its file belongs to this process's
 * effective user or root (or to UID, given --owner UID), checks its header (magic, format
 * version, checksum, geometry) and that every byte is allocated, joins it as a reader that
 * is its own group and starts with the frames published after it joined, and prints one
 * line per frame:
 *
 *     seq=<sequence number> bytes=<frame bytes> fnv1a64=<16 lowercase hex digits>
 *
 * (the 64-bit FNV-1a hash of the frame's bytes; --no-hash prints `seq=... bytes=...` only).
 * After COUNT frames it leaves the ring and exits 0. Exit statuses: 2 usage, 3 the ring is
 * missing or refused (an owner it does not trust, another format version, a geometry this
 * reader cannot read, a sparse file, no free reader record, readers already holding every
 * buffer an overwrite ring can spare), 4 end of stream before COUNT frames, 5 every writer
 * died (or the creator died before any writer joined), 6 the ring is damaged or a system
 * call failed, 128 + N after signal N (SIGINT, SIGTERM), having left the ring. Block and
 * overwrite rings are both read, with one writer or several; numbers with no frame (skips)
 * are passed over.
 *
 * Rules: written from docs/FORMAT.md alone (its numbers, offsets and structs come from
 * shmring_layout.h, the header shmring generates from its _layout.py and compiles into its
 * own C core); FORMAT.md's section names are cited where a step follows one. Nothing read from shared memory is trusted: every index is range-checked
 * before use, and a value out of range ends the program (status 6) after it leaves the
 * ring. Every wait is bounded: the header lock is given up after LOCK_LIMIT_NS, and a sleep
 * on the frames futex lasts at most SLICE_NS, after which the writers' liveness is checked,
 * so a dead writer (or header-lock holder) is noticed, and repaired, within about 0.2 s.
 *
 * Theory of operation: a block-policy reader that is its own group reads without the header
 * lock: it waits for the descriptor of its next sequence number to carry that number
 * (acquire), reads the frame, then raises its release word past it (release), which is all
 * a writer needs to reuse the buffer; a number published as a skip (DF_SKIP: a claim given
 * back, a writer that died holding it, or a gap a writer published, which since 2.2 carries
 * the number of frames it stands for) is passed over and counted dropped. An
 * overwrite-policy reader also reads without the lock: it pins the frame's buffer as a
 * hazard pointer (store the pin, full fence, look at the frame again) and unpins it after
 * reading. Joining, leaving and repairing the shared state after a dead participant run
 * under the header lock; a repair this reader does not do (finishing a writer's interrupted
 * switch to shared mode) it leaves to shmring by releasing the lock with its mark still set.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "shmring_layout.h"

enum {
    EXIT_USAGE = 2,
    EXIT_REFUSED = 3,
    EXIT_END = 4,
    EXIT_GONE = 5,
    EXIT_DAMAGED = 6,
    EXIT_SIGNAL_BASE = 128,
};

#define SLICE_NS 100000000LL        /* longest single sleep: liveness checks run this often */
#define SPIN_NS 50000LL             /* poll this long before sleeping, when polling pays */
#define LOCK_LIMIT_NS 5000000000LL  /* give up on the header lock after this long */
#define QUIESCE_LIMIT_NS 5000000000LL
#define LOCK_FIRST_BACKOFF_NS 20000L
#define LOCK_MAX_BACKOFF_NS 1000000L

static volatile sig_atomic_t stop_signal;

static void on_signal(int signo) { stop_signal = signo; }

/* ---- what this process knows about the ring it reads ------------------------------------ */

struct ring {
    const char *name;
    uid_t owner;     /* with owner_given (--owner): the one user trusted to own the ring */
    int owner_given; /* else this process's effective user and root are */
    char path[sizeof SHMRING_SHM_PREFIX + SHMRING_MAX_NAME];
    int fd; /* the lock descriptor: OFD locks only, never mapped (FORMAT.md, "Mapping") */
    ino_t inode;
    struct shmring_header h; /* the validated copy; geometry is never re-read from the ring */
    uint64_t page;
    uint8_t *header; /* [0, data_offset), read-write */
    size_t header_len;
    const uint8_t *data; /* [data_offset, segment_bytes), read-only */
    size_t data_len;
    struct shmring_control *control;
    struct shmring_reader *readers;
    struct shmring_group *groups;
    struct shmring_writer *writers;
    struct shmring_pin_line *pins; /* overwrite: one line per reader record; block: NULL */
    uint64_t *freelist;
    uint8_t *busy; /* scratch: one byte per buffer, for rebuilding the free list */
    uint64_t token;
    int membarrier_global;    /* MEMBARRIER_CMD_GLOBAL works: exclusive writer mode exists */
    long cpus;
    /* this reader */
    struct shmring_reader *me;
    uint64_t next;    /* the sequence number it reads next */
    uint64_t dropped; /* overwrite: frames it lost */
    int counted;      /* counted in reader_waiters (me->sleeping set) */
    int truncated;    /* its file was cut short: no look at the mapping may follow (SIGBUS) */
    int leave_mark;   /* while holding the lock: release it with lock_owner still set, so
                         that shmring repairs what this reader does not (FORMAT.md, "A
                         minimal correct reader") */
};

/* ---- small helpers -------------------------------------------------------------------- */

static uint64_t ld(const uint64_t *word) { return __atomic_load_n(word, __ATOMIC_ACQUIRE); }

static void st(uint64_t *word, uint64_t value) {
    __atomic_store_n(word, value, __ATOMIC_RELEASE);
}

static void st_seq_cst(uint64_t *word, uint64_t value) {
    __atomic_store_n(word, value, __ATOMIC_SEQ_CST);
}

/* Atomic add on the low 32 bits of a u64 word (reader_waiters, writer_waiters). */
static void add32(uint64_t *word, int32_t delta) {
    __atomic_fetch_add((uint32_t *)word, (uint32_t)delta, __ATOMIC_SEQ_CST);
}

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void sleep_ns(long ns) {
    struct timespec t = {0, ns};
    nanosleep(&t, NULL);
}

static int fail(const struct ring *r, int status, const char *format, ...) {
    va_list args;
    va_start(args, format);
    fprintf(stderr, "shmring-read: ring '%s': ", r->name);
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    va_end(args);
    return -status;
}

static int damaged(const struct ring *r, const char *what, uint64_t value) {
    return fail(r, EXIT_DAMAGED,
                "%s %" PRIu64 " read from shared memory is out of range; the ring was "
                "overwritten. Remove it (shmring rm) and create it again",
                what, value);
}

static long sys_futex(uint64_t *word, int op, uint32_t value, const struct timespec *timeout) {
    return syscall(SYS_futex, (uint32_t *)word, op, value, timeout, NULL, 0);
}

static void futex_wake_all(uint64_t *word) { sys_futex(word, FUTEX_WAKE, INT_MAX, NULL); }

static int membarrier(int command) { return (int)syscall(SYS_membarrier, command, 0, 0); }

static uint64_t fnv1a64(const uint8_t *bytes, uint64_t n) {
    uint64_t hash = 0xcbf29ce484222325ULL;
    for (uint64_t i = 0; i < n; i++) {
        hash ^= bytes[i];
        hash *= 0x100000001b3ULL;
    }
    return hash;
}

static uint32_t crc32_ieee(const uint8_t *bytes, size_t n) { /* zlib.crc32 */
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        crc ^= bytes[i];
        for (int bit = 0; bit < 8; bit++) {
            crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
        }
    }
    return ~crc;
}

/* ---- OFD locks (FORMAT.md, "Locks and liveness") ------------------------------------- */

static struct flock byte_lock(short type, uint64_t byte) {
    struct flock lock;
    memset(&lock, 0, sizeof lock); /* l_pid must be 0 for OFD locks */
    lock.l_type = type;
    lock.l_whence = SEEK_SET;
    lock.l_start = (off_t)byte;
    lock.l_len = 1;
    return lock;
}

/* 1 taken, 0 held by another open file description, -1 error. */
static int try_lock(const struct ring *r, uint64_t byte) {
    struct flock lock = byte_lock(F_WRLCK, byte);
    if (fcntl(r->fd, F_OFD_SETLK, &lock) == 0) {
        return 1;
    }
    return errno == EAGAIN || errno == EACCES ? 0 : -1;
}

static void unlock(const struct ring *r, uint64_t byte) {
    struct flock lock = byte_lock(F_UNLCK, byte);
    fcntl(r->fd, F_OFD_SETLK, &lock);
}

/* Whether another open file description write-locks byte `byte` (a participant is alive);
 * asked as a read lock, which conflicts with write locks only: a read lock, which anyone
 * who can read the file can take, proves nobody alive (FORMAT.md, "Locks and liveness"). */
static int is_locked(const struct ring *r, uint64_t byte) {
    struct flock lock = byte_lock(F_RDLCK, byte);
    if (fcntl(r->fd, F_OFD_GETLK, &lock) != 0) {
        return 1; /* cannot tell: never declare anyone dead on a failed check */
    }
    return lock.l_type != F_UNLCK;
}

/* ---- the header: checks in FORMAT.md's order ("Fixed header") ----------------------- */

static uint64_t round_up(uint64_t value, uint64_t multiple) {
    return (value + multiple - 1) / multiple * multiple;
}

/* The itemsize a NumPy dtype.str such as "|u1", "<f4", "<U3", "<M8[ns]" implies; 0 if it
 * is not a plain numeric dtype. */
static uint64_t dtype_itemsize(const char dtype[16]) {
    size_t length = strnlen(dtype, 16);
    for (size_t i = length; i < 16; i++) {
        if (dtype[i] != '\0') {
            return 0;
        }
    }
    if (length < 3 || !strchr("<>|=", dtype[0]) || !strchr("biufcSUVmM", dtype[1])) {
        return 0;
    }
    uint64_t count = 0;
    size_t i = 2;
    for (; i < length && dtype[i] >= '0' && dtype[i] <= '9' && count < 1000000; i++) {
        count = count * 10 + (uint64_t)(dtype[i] - '0');
    }
    if (i == 2 || count == 0) {
        return 0;
    }
    if (dtype[1] == 'm' || dtype[1] == 'M') {
        if (i < length && (dtype[i] != '[' || dtype[length - 1] != ']')) {
            return 0;
        }
    } else if (i != length) {
        return 0;
    }
    return dtype[1] == 'U' ? 4 * count : count;
}

#define CHECK(condition, ...)                                         \
    do {                                                              \
        if (!(condition)) {                                           \
            return fail(r, EXIT_REFUSED, __VA_ARGS__);                \
        }                                                             \
    } while (0)

#define CHECK_DERIVED(field, value)                                                         \
    CHECK(h->field == (value),                                                              \
          "header field " #field " is %" PRIu64 " but the geometry implies %" PRIu64        \
          "; not a ring this reader can read",                                              \
          (uint64_t)h->field, (uint64_t)(value))

static int check_header(struct ring *r, const uint8_t raw[SHMRING_FIXED_HEADER_BYTES],
                        uint64_t file_bytes) {
    struct shmring_header *h = &r->h;
    memcpy(h, raw, sizeof *h);
    CHECK(memcmp(h->magic, SHMRING_MAGIC, SHMRING_MAGIC_BYTES) == 0,
          "bad magic: the file is not a shmring ring");
    CHECK(h->version_major == SHMRING_VERSION_MAJOR,
          "format version %u.%u; this reader reads version %d.x only. Use a reader for that "
          "version",
          h->version_major, h->version_minor, SHMRING_VERSION_MAJOR);
    CHECK(h->checksum == crc32_ieee(raw, SHMRING_CHECKSUM_OFFSET),
          "header checksum mismatch: the header was overwritten");
    uint64_t itemsize = dtype_itemsize(h->dtype);
    CHECK(h->header_bytes == SHMRING_FIXED_HEADER_BYTES, "header_bytes is %u, not %d",
          h->header_bytes, SHMRING_FIXED_HEADER_BYTES);
    CHECK(h->ndim >= 1 && h->ndim <= SHMRING_MAX_NDIM, "ndim %u is outside [1, %d]", h->ndim,
          SHMRING_MAX_NDIM);
    CHECK(itemsize != 0 && itemsize == h->itemsize,
          "dtype '%.16s' with itemsize %u is not a plain numeric dtype", h->dtype, h->itemsize);
    uint64_t buffer_bytes = itemsize;
    for (uint32_t axis = 0; axis < SHMRING_MAX_NDIM; axis++) {
        uint64_t size = h->shape[axis];
        if (axis < h->ndim) {
            CHECK(size >= 1 && size <= SHMRING_MAX_DIM, "dimension %u of the shape is %" PRIu64,
                  axis, size);
            CHECK(!__builtin_mul_overflow(buffer_bytes, size, &buffer_bytes),
                  "the frame size overflows 64 bits");
        } else {
            CHECK(size == 0, "unused dimension %u of the shape is %" PRIu64 ", not 0", axis, size);
        }
    }
    CHECK(h->policy <= SHMRING_POLICY_OVERWRITE, "policy %u is unknown", h->policy);
    CHECK(h->slots >= 1 && h->slots <= SHMRING_MAX_SLOTS, "slots %u is out of range", h->slots);
    CHECK(h->buffers >= 1 && h->buffers <= SHMRING_MAX_SLOTS + SHMRING_MAX_SPARE_BUFFERS,
          "buffers %u is out of range", h->buffers);
    CHECK(h->max_readers >= 1 && h->max_readers <= SHMRING_MAX_READERS,
          "max_readers %u is out of range", h->max_readers);
    CHECK(h->max_writers >= 1 && h->max_writers <= SHMRING_MAX_WRITERS,
          "max_writers %u is out of range", h->max_writers);
    CHECK(h->meta_size <= SHMRING_MAX_META, "meta_size %u is out of range", h->meta_size);
    CHECK(h->creator_pid <= (uint64_t)1 << 32, "creator_pid %" PRIu64 " is out of range",
          h->creator_pid);
    /* The derived offsets (FORMAT.md, "Fixed header"); the bounds above keep every sum
     * below 2^62 except those involving buffer_bytes, which are checked. */
    uint64_t align = buffer_bytes >= r->page ? r->page : SHMRING_CACHE_LINE;
    CHECK(buffer_bytes <= SHMRING_SEQ_LIMIT, "the frame size %" PRIu64 " is too large",
          buffer_bytes);
    uint64_t stride = round_up(buffer_bytes, align);
    uint64_t descriptor_bytes = round_up(SHMRING_D_META_BYTE_OFFSET + h->meta_size,
                                         SHMRING_CACHE_LINE);
    uint64_t readers = SHMRING_DESCRIPTORS_OFFSET + (uint64_t)h->slots * descriptor_bytes;
    uint64_t groups = readers + SHMRING_RECORD_BYTES * (uint64_t)h->max_readers;
    uint64_t writers = groups + SHMRING_RECORD_BYTES * (uint64_t)h->max_readers;
    /* Overwrite rings: the pin table, one line per reader, before the free list */
    uint64_t pins = h->policy == SHMRING_POLICY_OVERWRITE
                        ? writers + SHMRING_RECORD_BYTES * (uint64_t)h->max_writers
                        : 0;
    uint64_t freelist = writers + SHMRING_RECORD_BYTES * (uint64_t)h->max_writers +
                        (pins ? SHMRING_RECORD_BYTES * (uint64_t)h->max_readers : 0);
    uint64_t data = round_up(freelist + 8 * (uint64_t)h->buffers, r->page);
    uint64_t segment;
    CHECK(!__builtin_mul_overflow(stride, (uint64_t)h->buffers, &segment) &&
              !__builtin_add_overflow(segment, data, &segment),
          "the segment size overflows 64 bits");
    CHECK_DERIVED(buffer_bytes, buffer_bytes);
    CHECK_DERIVED(buffer_stride, stride);
    CHECK_DERIVED(control_offset, SHMRING_CONTROL_OFFSET);
    CHECK_DERIVED(descriptors_offset, SHMRING_DESCRIPTORS_OFFSET);
    CHECK_DERIVED(descriptor_bytes, descriptor_bytes);
    CHECK_DERIVED(readers_offset, readers);
    CHECK_DERIVED(groups_offset, groups);
    CHECK_DERIVED(writers_offset, writers);
    CHECK_DERIVED(pins_offset, pins);
    CHECK_DERIVED(freelist_offset, freelist);
    CHECK_DERIVED(data_offset, data);
    CHECK_DERIVED(segment_bytes, segment);
    CHECK(file_bytes == segment,
          "the file is %" PRIu64 " bytes but its header describes %" PRIu64
          "; it was truncated or resized",
          file_bytes, segment);
    CHECK(h->policy != SHMRING_POLICY_BLOCK || h->buffers == h->slots,
          "a block-policy ring has as many buffers as slots, not %u buffers and %u slots",
          h->buffers, h->slots);
    CHECK(h->policy != SHMRING_POLICY_OVERWRITE ||
              (h->buffers >= h->slots && h->buffers - h->slots <= SHMRING_MAX_SPARE_BUFFERS),
          "an overwrite-policy ring has from slots to slots + %u buffers, not %u buffers "
          "and %u slots",
          SHMRING_MAX_SPARE_BUFFERS, h->buffers, h->slots);
    CHECK(segment <= SHMRING_MAX_SEGMENT_BYTES, "the segment's %" PRIu64 " bytes are too many",
          segment);
    CHECK(segment <= SIZE_MAX, "the ring is too large to map");
    return 0;
}

/* ---- attaching: open, check, map ("Mapping and the lock descriptor") ----------------- */

static int attach(struct ring *r) {
    r->page = (uint64_t)sysconf(_SC_PAGESIZE);
    r->cpus = sysconf(_SC_NPROCESSORS_ONLN);
    snprintf(r->path, sizeof r->path, "%s%s", SHMRING_SHM_PREFIX, r->name);
    /* O_NONBLOCK: POSIX leaves an O_RDWR open of a FIFO (planted under the name) undefined,
     * and a system may block it until the other end opens; cleared once the entry proves a
     * regular file. */
    r->fd = open(r->path, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (r->fd < 0) {
        if (errno == ENOENT) {
            return fail(r, EXIT_REFUSED, "no such ring (%s does not exist)", r->path);
        }
        return fail(r, EXIT_REFUSED, "cannot open %s: %s", r->path, strerror(errno));
    }
    struct stat file;
    if (fstat(r->fd, &file) != 0) {
        return fail(r, EXIT_DAMAGED, "fstat: %s", strerror(errno));
    }
    if (!S_ISREG(file.st_mode)) {
        return fail(r, EXIT_REFUSED,
                    "%s is not a regular file (a FIFO, socket or device planted under the "
                    "name?): no ring. Remove it (shmring rm %s) and create the ring again",
                    r->path, r->name);
    }
    if (fcntl(r->fd, F_SETFL, fcntl(r->fd, F_GETFL) & ~O_NONBLOCK) != 0) {
        return fail(r, EXIT_DAMAGED, "fcntl: %s", strerror(errno));
    }
    r->inode = file.st_ino;
    /* Before reading a byte: whoever owns the file can feed this reader frames, and any
     * local user can plant a ring under the name while its producer is down. */
    if (r->owner_given ? file.st_uid != r->owner
                       : file.st_uid != geteuid() && file.st_uid != 0) {
        return fail(r, EXIT_REFUSED,
                    "%s belongs to uid %u, a user this reader does not trust: its owner can "
                    "feed it frames. If you trust that user, pass --owner %u; if not, have it "
                    "removed (by that user or root: shmring rm %s) and create the ring again",
                    r->path, (unsigned)file.st_uid, (unsigned)file.st_uid, r->name);
    }
    uint8_t raw[SHMRING_FIXED_HEADER_BYTES];
    if (file.st_size < SHMRING_FIXED_HEADER_BYTES ||
        pread(r->fd, raw, sizeof raw, 0) != (ssize_t)sizeof raw) {
        return fail(r, EXIT_REFUSED,
                    "the file is %lld bytes, smaller than a shmring header (%d): not a ring",
                    (long long)file.st_size, SHMRING_FIXED_HEADER_BYTES);
    }
    int checked = check_header(r, raw, (uint64_t)file.st_size);
    if (checked < 0) {
        return checked;
    }
    /* A hole in a sparse file gets its page at first touch, which a full /dev/shm answers
     * with SIGBUS; shmring's create allocates every page, so a sparse file was planted. */
    if ((uint64_t)file.st_blocks * 512 < (uint64_t)file.st_size) {
        return fail(r, EXIT_REFUSED,
                    "only %lld of its %lld bytes are allocated, and shmring's create allocates "
                    "every page: the file was made or punched by something else (a planted "
                    "file?). Remove it (shmring rm %s) and create the ring again",
                    (long long)file.st_blocks * 512, (long long)file.st_size, r->name);
    }
    /* Map through a second open file description, closed at once: a mapping keeps the
     * description it was made from alive, and with it every OFD lock taken through it. */
    char self[64];
    snprintf(self, sizeof self, "/proc/self/fd/%d", r->fd);
    int map_fd = open(self, O_RDWR | O_CLOEXEC);
    if (map_fd < 0) {
        return fail(r, EXIT_DAMAGED, "cannot reopen the ring for mapping: %s", strerror(errno));
    }
    r->header_len = (size_t)r->h.data_offset;
    r->data_len = (size_t)(r->h.segment_bytes - r->h.data_offset);
    void *header = mmap(NULL, r->header_len, PROT_READ | PROT_WRITE, MAP_SHARED, map_fd, 0);
    void *data = mmap(NULL, r->data_len, PROT_READ, MAP_SHARED, map_fd, (off_t)r->h.data_offset);
    close(map_fd);
    if (header == MAP_FAILED || data == MAP_FAILED) {
        if (header != MAP_FAILED) {
            munmap(header, r->header_len);
        }
        if (data != MAP_FAILED) {
            munmap(data, r->data_len);
        }
        return fail(r, EXIT_DAMAGED, "mmap: %s", strerror(errno));
    }
    r->header = header;
    r->data = data;
    r->control = (struct shmring_control *)(r->header + SHMRING_CONTROL_OFFSET);
    r->readers = (struct shmring_reader *)(r->header + r->h.readers_offset);
    r->groups = (struct shmring_group *)(r->header + r->h.groups_offset);
    r->writers = (struct shmring_writer *)(r->header + r->h.writers_offset);
    r->pins = r->h.pins_offset ? (struct shmring_pin_line *)(r->header + r->h.pins_offset) : NULL;
    r->freelist = (uint64_t *)(r->header + r->h.freelist_offset);
    r->busy = calloc(r->h.buffers, 1);
    if (r->busy == NULL) {
        return fail(r, EXIT_DAMAGED, "out of memory");
    }
    do { /* a random non-zero token, 62 bits like shmring's */
        if (getrandom(&r->token, sizeof r->token, 0) != (ssize_t)sizeof r->token) {
            return fail(r, EXIT_DAMAGED, "getrandom: %s", strerror(errno));
        }
        r->token = (r->token >> 2) | 1;
    } while (r->token == 0);
    int commands = membarrier(MEMBARRIER_CMD_QUERY);
    if (commands > 0) {
        r->membarrier_global = (commands & MEMBARRIER_CMD_GLOBAL) != 0;
    }
    return 0;
}

static void detach(struct ring *r) {
    if (r->header != NULL) {
        munmap(r->header, r->header_len);
    }
    if (r->data != NULL) {
        munmap((void *)r->data, r->data_len);
    }
    free(r->busy);
    if (r->fd >= 0) {
        close(r->fd); /* drops every OFD lock this process holds on the ring */
    }
}

static struct shmring_descriptor *descriptor(const struct ring *r, uint64_t seq) {
    return (struct shmring_descriptor *)(r->header + r->h.descriptors_offset +
                                         (seq % r->h.slots) * r->h.descriptor_bytes);
}

/* ---- repair under the header lock ("Header lock and repair") ------------------------ */

static int check_size(struct ring *r) {
    struct stat file;
    if (fstat(r->fd, &file) != 0 || (uint64_t)file.st_size != r->h.segment_bytes) {
        r->truncated = 1;
        return fail(r, EXIT_DAMAGED,
                    "its file is no longer %" PRIu64 " bytes; another process truncated or "
                    "resized it",
                    r->h.segment_bytes);
    }
    return 0;
}

static int alive(const struct ring *r, uint64_t token, uint64_t byte) {
    return token == r->token || is_locked(r, byte);
}

static uint64_t live_writers(const struct ring *r) {
    uint64_t live = 0;
    for (uint32_t i = 0; i < r->h.max_writers; i++) {
        struct shmring_writer *w = &r->writers[i];
        if (ld(&w->state) == SHMRING_STATE_ACTIVE &&
            alive(r, ld(&w->token), SHMRING_LOCK_WRITER_BASE + i)) {
            live++;
        }
    }
    return live;
}

#define WINDOW_TRIES 64 /* then the last look stands: writers moved tail at every one */

/* The window [tail, head) of sequence numbers whose descriptors may hold a frame: head loaded
 * between two loads of tail that agree (FORMAT.md, "A consistent window"), since writers
 * move both without the lock; then tail <= head <= tail + slots holds between the two. */
static int window(const struct ring *r, uint64_t *tail, uint64_t *head) {
    for (int tries = 0; tries < WINDOW_TRIES; tries++) {
        uint64_t before = ld(&r->control->tail);
        *head = ld(&r->control->head);
        *tail = ld(&r->control->tail);
        if (*tail == before) {
            break;
        }
    }
    if (*tail > *head || *head - *tail > r->h.slots || *head >= SHMRING_SEQ_LIMIT) {
        return damaged(r, "head", *head);
    }
    return 0;
}

static int recount(struct ring *r) {
    uint64_t writers = 0, readers = 0;
    uint64_t members[SHMRING_MAX_READERS] = {0};
    for (uint32_t i = 0; i < r->h.max_writers; i++) {
        writers += ld(&r->writers[i].state) == SHMRING_STATE_ACTIVE;
    }
    for (uint32_t i = 0; i < r->h.max_readers; i++) {
        struct shmring_reader *reader = &r->readers[i];
        if (ld(&reader->state) != SHMRING_STATE_ACTIVE) {
            continue;
        }
        readers++;
        uint64_t group = ld(&reader->group);
        if (group != SHMRING_NONE) {
            if (group >= r->h.max_readers) {
                return damaged(r, "group index", group);
            }
            members[group]++;
        }
    }
    for (uint32_t i = 0; i < r->h.max_readers; i++) {
        st(&r->groups[i].members, members[i]);
        if (members[i] == 0) {
            st(&r->groups[i].state, SHMRING_STATE_FREE);
        }
    }
    st(&r->control->writers, writers);
    st(&r->control->readers, readers);
    st(&r->control->membership, ld(&r->control->membership) + 1);
    /* The writers' mode is not this reader's to change ("Recount"): an overwrite ring in
     * shared mode and not sequenced is one whose resequencing was cut short, which it
     * leaves to shmring (repair_buffers). */
    return 0;
}

static int mark_busy(const struct ring *r, uint64_t buffer, const char *what) {
    if (buffer >= r->h.buffers) {
        return damaged(r, what, buffer);
    }
    r->busy[buffer] = 1;
    return 0;
}

static int rebuild_free_list(struct ring *r) {
    uint64_t tail, head;
    int result = window(r, &tail, &head);
    if (result < 0) {
        return result;
    }
    memset(r->busy, 0, r->h.buffers);
    for (uint64_t seq = tail; seq < head; seq++) {
        struct shmring_descriptor *d = descriptor(r, seq);
        if (ld(&d->seq) == seq && !(ld(&d->flags) & SHMRING_DF_EVICTED) &&
            (result = mark_busy(r, ld(&d->buffer), "buffer index")) < 0) {
            return result;
        }
    }
    for (uint32_t i = 0; i < r->h.max_writers; i++) {
        uint64_t claimed = ld(&r->writers[i].claimed);
        if (ld(&r->writers[i].state) == SHMRING_STATE_ACTIVE && claimed != SHMRING_NONE &&
            (result = mark_busy(r, claimed, "claimed buffer index")) < 0) {
            return result;
        }
    }
    /* Pinned buffers are not busy: writers skip a pinned buffer when they take one. */
    uint64_t count = 0;
    for (uint64_t buffer = r->h.buffers; buffer-- > 0;) {
        if (!r->busy[buffer]) {
            st(&r->freelist[count++], buffer);
        }
    }
    st(&r->control->free_count, count);
    return 0;
}

/* A sequenced ring (shared mode, block policy, F_SEQUENCED): publish every number in
 * [head, next_seq) that is unpublished and that no active writer record claims as a skip
 * (its writer died, or gave it back), then move head over what is published with the
 * writers' own compare-and-swap ("Several writers: the sequenced ring"). */
static int settle(struct ring *r) {
    struct shmring_control *c = r->control;
    uint64_t head = ld(&c->head), next_seq = ld(&c->next_seq);
    if (next_seq < head || next_seq - head > r->h.slots || next_seq >= SHMRING_SEQ_LIMIT) {
        return damaged(r, "next_seq", next_seq);
    }
    /* Every claim before any descriptor: a writer publishes (seq) before it clears its
     * claim, so a number whose claim is not seen here is seen published below. */
    uint64_t claims[SHMRING_MAX_WRITERS];
    uint32_t count = 0;
    for (uint32_t i = 0; i < r->h.max_writers; i++) {
        uint64_t claimed = __atomic_load_n(&r->writers[i].claimed_seq, __ATOMIC_SEQ_CST);
        if (ld(&r->writers[i].state) == SHMRING_STATE_ACTIVE && claimed != SHMRING_NONE) {
            claims[count++] = claimed;
        }
    }
    for (uint64_t seq = head; seq < next_seq; seq++) {
        int held = 0;
        for (uint32_t i = 0; i < count && !held; i++) {
            held = claims[i] == seq;
        }
        struct shmring_descriptor *d = descriptor(r, seq);
        if (!held && __atomic_load_n(&d->seq, __ATOMIC_SEQ_CST) != seq) {
            st(&d->flags, SHMRING_DF_SKIP);
            st_seq_cst(&d->seq, seq); /* published: no frame */
        }
    }
    while (head < SHMRING_SEQ_LIMIT &&
           __atomic_load_n(&descriptor(r, head)->seq, __ATOMIC_SEQ_CST) == head) {
        if (__atomic_compare_exchange_n(&c->head, &head, head + 1, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST)) {
            head++;
        } /* else `head` now holds the newer value: look there */
    }
    return 0;
}

/* Complete a publish a dead writer left between its descriptor and head, and rebuild the
 * free list; not while a live exclusive-mode writer owns both. A sequenced block ring is
 * settled instead; a block ring in shared mode without F_SEQUENCED (a switch to shared
 * mode that its writer did not finish), and an overwrite ring in shared mode (its repair
 * quiesces the writers, which this reader does not implement), are left to shmring. */
static int repair_buffers(struct ring *r) {
    struct shmring_control *c = r->control;
    uint64_t mode = ld(&c->writer_mode);
    if (mode == SHMRING_MODE_EXCLUSIVE && live_writers(r) > 0) {
        return 0;
    }
    if (mode == SHMRING_MODE_SHARED) {
        if (r->h.policy == SHMRING_POLICY_BLOCK && ld(&c->flags) & SHMRING_F_SEQUENCED) {
            return settle(r);
        }
        r->leave_mark = 1; /* the next shmring lock holder repairs */
        return 0;
    }
    uint64_t head = ld(&c->head);
    for (uint32_t i = 0; i < r->h.slots; i++) {
        if (head >= SHMRING_SEQ_LIMIT || ld(&descriptor(r, head)->seq) != head) {
            break;
        }
        head++;
    }
    st(&c->head, head);
    if (r->h.policy == SHMRING_POLICY_OVERWRITE) {
        uint64_t tail = ld(&c->tail), low = head > r->h.slots ? head - r->h.slots : 0;
        tail = tail > low ? tail : low;
        st(&c->tail, tail < head ? tail : head);
    }
    return rebuild_free_list(r);
}

static void uncount_sleeper(uint64_t *sleeping, uint64_t *waiters) {
    if (ld(sleeping)) {
        st(sleeping, 0);
        add32(waiters, -1);
    }
}

/* Free the records of dead participants; 1 if any was reaped, 0 if none, < 0 on damage. */
static int reap_dead(struct ring *r) {
    int reaped_writer = 0, reaped_reader = 0, result = 0;
    for (uint32_t i = 0; i < r->h.max_writers; i++) {
        struct shmring_writer *w = &r->writers[i];
        if (ld(&w->state) == SHMRING_STATE_ACTIVE &&
            !alive(r, ld(&w->token), SHMRING_LOCK_WRITER_BASE + i)) {
            uncount_sleeper(&w->sleeping, &r->control->writer_waiters);
            st(&w->state, SHMRING_STATE_FREE);
            st(&w->token, 0);
            reaped_writer = 1;
        }
    }
    for (uint32_t i = 0; i < r->h.max_readers; i++) {
        struct shmring_reader *reader = &r->readers[i];
        if (ld(&reader->state) == SHMRING_STATE_ACTIVE &&
            !alive(r, ld(&reader->token), SHMRING_LOCK_READER_BASE + i)) {
            uncount_sleeper(&reader->sleeping, &r->control->reader_waiters);
            st(&reader->state, SHMRING_STATE_FREE);
            st(&reader->token, 0);
            reaped_reader = 1;
        }
    }
    if (reaped_writer) {
        result = repair_buffers(r);
    }
    if (result >= 0 && (reaped_writer || reaped_reader)) {
        result = recount(r);
    }
    return result < 0 ? result : reaped_writer || reaped_reader;
}

static int repair(struct ring *r) {
    int result = check_size(r);
    if (result >= 0) {
        result = reap_dead(r);
    }
    if (result >= 0) {
        result = recount(r);
    }
    if (result >= 0) {
        result = repair_buffers(r);
    }
    return result;
}

/* ---- the header lock ------------------------------------------------------------------ */

static int lock_header(struct ring *r) {
    int64_t deadline = now_ns() + LOCK_LIMIT_NS;
    long backoff = LOCK_FIRST_BACKOFF_NS;
    int taken;
    while ((taken = try_lock(r, SHMRING_LOCK_HEADER)) == 0) {
        if (now_ns() > deadline) {
            return fail(r, EXIT_DAMAGED,
                        "timed out waiting for the header lock; another process holds it (a "
                        "stopped process? see `shmring inspect`)");
        }
        sleep_ns(backoff);
        backoff = backoff * 2 < LOCK_MAX_BACKOFF_NS ? backoff * 2 : LOCK_MAX_BACKOFF_NS;
    }
    if (taken < 0) {
        return fail(r, EXIT_DAMAGED, "fcntl(F_OFD_SETLK): %s", strerror(errno));
    }
    r->leave_mark = 0;
    if (ld(&r->control->lock_owner) != 0) { /* the last holder died inside: repair first */
        int repaired = repair(r);
        if (repaired < 0) {
            unlock(r, SHMRING_LOCK_HEADER);
            return repaired;
        }
    }
    st(&r->control->lock_owner, r->token);
    return 0;
}

/* `clean` 0 (or a repair left to shmring) leaves the owner mark so that the next holder
 * repairs. */
static void unlock_header(struct ring *r, int clean) {
    if (clean && !r->leave_mark) {
        st(&r->control->lock_owner, 0);
    }
    unlock(r, SHMRING_LOCK_HEADER);
}

static int unlock_with(struct ring *r, int result) {
    unlock_header(r, result >= 0);
    return result;
}

/* ---- joining and leaving ("Joining and leaving") ----------------------------------- */

/* Under the lock, block policy: make our record visible to the writers' lock-free steps
 * (the exclusive writer's reclaim, sequenced writers' advance of tail) and wait until no
 * writer is inside one it may have begun before. */
static int quiesce_writers(struct ring *r) {
    if (!r->membarrier_global) {
        return 0;
    }
    if (membarrier(MEMBARRIER_CMD_GLOBAL) != 0) {
        return fail(r, EXIT_DAMAGED, "membarrier(MEMBARRIER_CMD_GLOBAL): %s", strerror(errno));
    }
    int64_t deadline = now_ns() + QUIESCE_LIMIT_NS;
    for (uint32_t i = 0; i < r->h.max_writers; i++) {
        struct shmring_writer *w = &r->writers[i];
        while (ld(&w->state) == SHMRING_STATE_ACTIVE && ld(&w->in_publish) &&
               ld(&w->token) != r->token && is_locked(r, SHMRING_LOCK_WRITER_BASE + i)) {
            if (now_ns() > deadline) {
                return fail(r, EXIT_DAMAGED,
                            "the writer (pid %" PRIu64 ") did not leave its publish step; is "
                            "it stopped?",
                            ld(&w->pid));
            }
            sleep_ns(50000);
        }
    }
    return 0;
}

static int join_locked(struct ring *r) {
    int result = reap_dead(r);
    if (result < 0) {
        return result;
    }
    uint32_t index = 0;
    for (; index < r->h.max_readers; index++) {
        if (ld(&r->readers[index].state) == SHMRING_STATE_FREE) {
            int taken = try_lock(r, SHMRING_LOCK_READER_BASE + index);
            if (taken < 0) {
                return fail(r, EXIT_DAMAGED, "fcntl(F_OFD_SETLK): %s", strerror(errno));
            }
            if (taken) {
                break;
            }
        }
    }
    if (index == r->h.max_readers) {
        return fail(r, EXIT_REFUSED,
                    "all %u reader records are taken by live readers; close one, or create "
                    "the ring with a larger max_readers",
                    r->h.max_readers);
    }
    struct shmring_reader *me = r->me = &r->readers[index];
    st(&me->token, r->token);
    st(&me->pid, (uint64_t)getpid());
    st(&me->state, SHMRING_STATE_ACTIVE);
    uint64_t tail, head;
    if ((result = window(r, &tail, &head)) < 0) {
        return result;
    }
    st(&me->dropped, 0);
    st(&me->sleeping, 0);
    st(&me->pinned, SHMRING_NONE);
    if (r->pins) { /* a reaped reader's pins must not outlive it */
        struct shmring_pin_line *line = &r->pins[index];
        for (int i = 0; i < SHMRING_PINS_PER_LINE; i++) {
            st(&line->held[i], SHMRING_NONE);
        }
        st(&line->top, 0);
    }
    st(&me->group, SHMRING_NONE);
    st(&me->release, head); /* the frames published from now on */
    r->next = head;
    if ((result = recount(r)) < 0) {
        return result;
    }
    if (r->h.policy == SHMRING_POLICY_BLOCK) { /* exclusive or sequenced writers */
        if ((result = quiesce_writers(r)) < 0) {
            return result;
        }
        tail = ld(&r->control->tail); /* frames a writer freed before it saw us: skip */
        if (tail > r->next) {
            r->next = tail;
            st(&me->release, tail);
        }
    }
    return 0;
}

static int join(struct ring *r) {
    int result = lock_header(r);
    if (result < 0) {
        return result;
    }
    result = unlock_with(r, join_locked(r));
    futex_wake_all(&r->control->membership); /* writers waiting for readers */
    return result;
}

/* A changed word cannot be slept through. An atomic add (docs/FORMAT.md, "Memory
 * ordering"): another waker's increment at the same moment must count too. */
static void wake_writers(struct ring *r) {
    uint64_t *space = &r->control->space;
    uint64_t value = __atomic_load_n(space, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(space, &value, (value + 1) & 0xFFFFFFFFu, 0,
                                        __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
    }
    futex_wake_all(space);
}

/* Under the lock, leaving: when the creator died and nobody else is left, nobody would ever
 * unlink the ring's name, so the last one out does (if the name still names this ring). */
static int unlink_if_orphaned(struct ring *r) {
    if (is_locked(r, SHMRING_LOCK_CREATOR)) {
        return 0;
    }
    int result = reap_dead(r);
    if (result < 0) {
        return result;
    }
    struct stat named;
    if (ld(&r->control->writers) == 0 && ld(&r->control->readers) == 0 &&
        stat(r->path, &named) == 0 && named.st_ino == r->inode) {
        unlink(r->path);
    }
    return 0;
}

static int leave(struct ring *r) {
    if (r->truncated) {
        return 0; /* exiting closes our descriptor: others reap the record */
    }
    struct shmring_reader *me = r->me;
    int result = lock_header(r);
    if (result < 0) {
        return result; /* exiting closes our descriptor: others reap the record */
    }
    if (ld(&me->token) == r->token) {
        st(&me->pinned, SHMRING_NONE);
        uncount_sleeper(&me->sleeping, &r->control->reader_waiters);
        st(&me->state, SHMRING_STATE_FREE);
        st(&me->token, 0);
        unlock(r, SHMRING_LOCK_READER_BASE + (uint64_t)(me - r->readers));
    }
    r->counted = 0;
    result = recount(r);
    if (result >= 0) {
        result = unlink_if_orphaned(r);
    }
    unlock_with(r, result);
    wake_writers(r);
    futex_wake_all(&r->control->membership);
    return result;
}

/* ---- reading ("Reading", "Memory ordering") ----------------------------------------- */

struct frame {
    uint64_t seq;
    uint64_t bytes;
    const uint8_t *start;
};

/* What is wrong with a descriptor's words: the name of the word and its value. */
struct defect {
    const char *what;
    uint64_t value;
};

/* Check a published descriptor's words and describe the frame; -1 (with `defect` filled
 * in) if they are out of range. Reports nothing: an overwrite reader learns only after its
 * pin whether what it read was the frame's own. */
static int describe(const struct ring *r, const struct shmring_descriptor *d, uint64_t seq,
                    struct frame *frame, struct defect *defect) {
    uint64_t buffer = ld(&d->buffer), flags = ld(&d->flags);
    if (buffer >= r->h.buffers) {
        *defect = (struct defect){"buffer index", buffer};
        return -1;
    }
    if ((flags >> SHMRING_META_LEN_SHIFT) > r->h.meta_size) {
        *defect = (struct defect){"metadata length", flags >> SHMRING_META_LEN_SHIFT};
        return -1;
    }
    uint64_t bytes = r->h.buffer_bytes;
    if (flags & SHMRING_DF_OWN_SHAPE) {
        bytes = r->h.itemsize;
        for (uint32_t axis = 0; axis < r->h.ndim; axis++) {
            uint64_t size = ld(&d->shape[axis]);
            if (size < 1 || size > r->h.shape[axis]) {
                *defect = (struct defect){"frame dimension", size};
                return -1;
            }
            bytes *= size; /* no overflow: each size is at most the ring's */
        }
    }
    frame->seq = seq;
    frame->bytes = bytes;
    frame->start = r->data + buffer * r->h.buffer_stride;
    return 0;
}

static void count_dropped(struct ring *r, uint64_t frames) {
    if (frames) {
        r->dropped += frames;
        st(&r->me->dropped, r->dropped);
    }
}

/* Block policy: raise the release word to `release` (release store; this reader holds no
 * frame below it), then wake a writer that sleeps for space, if it asked to be woken by
 * now. */
static void release_to(struct ring *r, uint64_t release) {
    st(&r->me->release, release);
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* the release before the load of writer_waiters */
    struct shmring_control *c = r->control;
    if ((uint32_t)ld(&c->writer_waiters) != 0 && release >= ld(&c->space_wanted)) {
        wake_writers(r);
    }
}

/* Block policy, own group, no lock: frame `next` if it is published (1), else 0. Numbers
 * published as skips (DF_SKIP) are passed over, released and counted dropped, each as the
 * frames it stands for. */
static int take_own(struct ring *r, struct frame *frame) {
    struct shmring_descriptor *d = descriptor(r, r->next);
    uint64_t skipped = 0;
    /* acquire: the frame's words and bytes are visible once seq reads the number */
    uint64_t flags;
    while (ld(&d->seq) == r->next && ((flags = ld(&d->flags)) & SHMRING_DF_SKIP)) {
        r->next++;
        skipped += shmring_skip_count(flags);
        d = descriptor(r, r->next);
    }
    if (skipped) {
        count_dropped(r, skipped);
        release_to(r, r->next);
    }
    if (ld(&d->seq) != r->next) {
        return 0;
    }
    struct defect defect;
    if (describe(r, d, r->next, frame, &defect) < 0) {
        return damaged(r, defect.what, defect.value);
    }
    return 1;
}

/* Block policy: done with frame `seq`. */
static void release_own(struct ring *r, uint64_t seq) {
    r->next = seq + 1;
    release_to(r, seq + 1);
}

/* Overwrite policy: whether one more pin leaves every writer a buffer to write into
 * (pins + 1 + max(writers, 1) <= buffers), counting every pin of the other active readers:
 * `pinned`, and the words of their pin line up to its top (at most PINS_PER_LINE). This
 * reader holds one frame at a time, in `pinned`, and never writes its own line. */
static int room_to_pin(const struct ring *r) {
    uint64_t pins = 0;
    for (uint32_t i = 0; i < r->h.max_readers; i++) {
        const struct shmring_reader *reader = &r->readers[i];
        if (reader == r->me || ld(&reader->state) != SHMRING_STATE_ACTIVE) {
            continue;
        }
        pins += ld(&reader->pinned) != SHMRING_NONE;
        const struct shmring_pin_line *line = &r->pins[i];
        uint64_t top = ld(&line->top);
        for (uint64_t j = 0; j < top && j < SHMRING_PINS_PER_LINE; j++) {
            pins += ld(&line->held[j]) != SHMRING_NONE;
        }
    }
    uint64_t writers = ld(&r->control->writers);
    return pins + 1 + (writers ? writers : 1) <= r->h.buffers;
}

/* Overwrite policy: whether frame `seq` is still in `d`, not evicted, in `buffer`. A writer
 * moves tail past a frame (one writer) or takes its seq word (several: seq | SEQ_BUSY)
 * before it rewrites any other word of its descriptor, so a seq still `seq` and a tail at
 * or below it here mean that every word read before this look was the frame's own. */
static int still_there(const struct ring *r, const struct shmring_descriptor *d, uint64_t seq,
                       uint64_t buffer) {
    return ld(&d->seq) == seq && !(ld(&d->flags) & SHMRING_DF_EVICTED) &&
           ld(&d->buffer) == buffer && ld(&r->control->tail) <= seq;
}

#define PIN_TRIES 64 /* looks per take: a writer lapping the reader this often, try later */

/* Overwrite policy, own group, no lock ("Reading", overwrite policy): the oldest frame from
 * `next` on that is in the window and not evicted, its buffer pinned (1); 0 if none yet.
 * The pin is a hazard pointer: store it, fence, look at the frame again; a writer marks a
 * frame evicted (or retires it), fences, then looks at the pins, so one sees the other.
 * Frames passed over (behind tail, evicted, skips) are counted dropped. */
static int take_overwrite(struct ring *r, struct frame *frame) {
    for (int tries = 0; tries < PIN_TRIES; tries++) {
        uint64_t tail, head;
        int result = window(r, &tail, &head);
        if (result < 0) {
            return result;
        }
        if (r->next > head) {
            return damaged(r, "head", head);
        }
        uint64_t cursor = r->next, skipped = 0;
        if (cursor < tail) {
            skipped = tail - cursor;
            cursor = tail;
        }
        int again = 0;
        for (; cursor < head; cursor++) {
            struct shmring_descriptor *d = descriptor(r, cursor);
            uint64_t held = ld(&d->seq); /* then the words it publishes */
            if (held != cursor) {
                if (held != SHMRING_NONE && (held & ~SHMRING_SEQ_BUSY) >= cursor) {
                    skipped++; /* replaced, or being evicted (a writer owns it): dropped */
                    continue;
                }
                again = 1; /* not what a window frame can hold: look again */
                break;
            }
            uint64_t flags = ld(&d->flags);
            if (flags & (SHMRING_DF_EVICTED | SHMRING_DF_SKIP)) { /* no frame: dropped */
                skipped += flags & SHMRING_DF_SKIP ? shmring_skip_count(flags) : 1;
                continue;
            }
            uint64_t buffer = ld(&d->buffer);
            struct defect defect;
            int bad = describe(r, d, cursor, frame, &defect);
            if (!room_to_pin(r)) {
                return fail(r, EXIT_REFUSED,
                            "readers hold as many frames as its %u buffers allow while leaving "
                            "one to each writer; create the ring with a larger spare_buffers",
                            r->h.buffers);
            }
            st_seq_cst(&r->me->pinned, buffer);
            __atomic_thread_fence(__ATOMIC_SEQ_CST); /* the pin, then the second look */
            if (!still_there(r, d, cursor, buffer)) {
                st(&r->me->pinned, SHMRING_NONE);
                again = 1; /* evicted or replaced meanwhile */
                break;
            }
            if (bad < 0) { /* the frame's own words, out of range */
                return damaged(r, defect.what, defect.value);
            }
            r->next = cursor + 1;
            st(&r->me->release, cursor + 1); /* what it may still want (FORMAT.md step 5) */
            count_dropped(r, skipped);
            return 1;
        }
        if (!again) { /* nothing new: what was passed over is dropped */
            r->next = cursor;
            st(&r->me->release, cursor);
            count_dropped(r, skipped);
            return 0;
        }
    }
    return 0; /* the wait loop looks again at once */
}

static int take(struct ring *r, struct frame *frame) {
    return r->h.policy == SHMRING_POLICY_BLOCK ? take_own(r, frame) : take_overwrite(r, frame);
}

static void release(struct ring *r, uint64_t seq) {
    if (r->h.policy == SHMRING_POLICY_BLOCK) {
        release_own(r, seq);
    } else {
        st(&r->me->pinned, SHMRING_NONE); /* only frees a buffer: safe without the lock */
    }
}

/* Whether frame `next` may be there: a cheap look, without the lock. */
static int maybe_published(const struct ring *r) {
    if (r->h.policy == SHMRING_POLICY_BLOCK) {
        return ld(&descriptor(r, r->next)->seq) == r->next;
    }
    return ld(&r->control->head) > r->next;
}

/* ---- waiting ("Sleeping and waking", "End of stream and writer gone") --------------- */

static void count_sleeper(struct ring *r) {
    if (r->counted) {
        return;
    }
    /* The other half of the writer's "publish, fence, load reader_waiters": a seq_cst add,
     * then a full fence, or the next look (an acquire load) may pass the add. */
    add32(&r->control->reader_waiters, 1);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    st(&r->me->sleeping, 1);
    r->counted = 1;
}

static void uncount_self(struct ring *r) {
    if (r->counted) {
        r->counted = 0;
        uncount_sleeper(&r->me->sleeping, &r->control->reader_waiters);
    }
}

/* Whether an active writer record belongs to a dead writer (a sequenced ring waits for
 * the number it claimed until a repair publishes it as a skip). */
static int dead_writer(const struct ring *r) {
    for (uint32_t i = 0; i < r->h.max_writers; i++) {
        struct shmring_writer *w = &r->writers[i];
        if (ld(&w->state) == SHMRING_STATE_ACTIVE &&
            !alive(r, ld(&w->token), SHMRING_LOCK_WRITER_BASE + i)) {
            return 1;
        }
    }
    return 0;
}

/* Whether the header lock's last holder died in it: its mark is set, the lock free. */
static int lock_holder_died(const struct ring *r) {
    return ld(&r->control->lock_owner) != 0 && !is_locked(r, SHMRING_LOCK_HEADER);
}

/* The liveness check of a waiting reader ("Writer gone"): repair what dead writers or a
 * dead lock holder left (the frame it waits for may be a dead writer's claimed number);
 * < 0 when nobody is left to end the stream, else 0. */
static int check_writers(struct ring *r) {
    int result = check_size(r);
    if (result < 0) {
        return result;
    }
    if (live_writers(r) > 0 && !dead_writer(r) && !lock_holder_died(r)) {
        return 0;
    }
    if ((result = lock_header(r)) < 0) { /* a dead holder's mark: lock_header repairs */
        return result;
    }
    result = reap_dead(r);
    uint64_t flags = ld(&r->control->flags);
    int orphaned = result >= 0 && ld(&r->control->writers) == 0 && !(flags & SHMRING_F_CLOSED);
    /* Gone: a writer joined and none is left, or none ever joined and the creator died. */
    int gone = orphaned &&
               ((flags & SHMRING_F_STARTED) || !is_locked(r, SHMRING_LOCK_CREATOR));
    unlock_with(r, result);
    if (result < 0) {
        return result;
    }
    if (gone && (flags & SHMRING_F_STARTED)) {
        return fail(r, EXIT_GONE,
                    "every writer died without closing the stream; frames published before "
                    "that were delivered");
    }
    if (gone) {
        return fail(r, EXIT_GONE,
                    "its creator died and no writer ever joined; nothing can end this stream");
    }
    return 0;
}

static int stopped(const struct ring *r) {
    (void)r;
    return stop_signal ? -(EXIT_SIGNAL_BASE + stop_signal) : 0;
}

/* Wait until frame `next` may be there (0), or the end: stream closed, writers gone, a
 * signal (< 0). */
static int wait_for_frame(struct ring *r) {
    if ((uint64_t)r->cpus >= ld(&r->control->readers) + ld(&r->control->writers)) {
        /* Everyone has a CPU: back-to-back frames come sooner than a sleep and wake-up. */
        int64_t until = now_ns() + SPIN_NS;
        while (now_ns() < until) {
            if (maybe_published(r)) {
                return 0;
            }
        }
    }
    count_sleeper(r);
    int64_t next_check = now_ns() + SLICE_NS;
    for (;;) {
        int result = stopped(r);
        if (result < 0) {
            return result;
        }
        uint32_t observed = (uint32_t)ld(&r->control->frames);
        if (maybe_published(r)) {
            return 0;
        }
        if ((ld(&r->control->flags) & SHMRING_F_CLOSED) && ld(&r->control->writers) == 0) {
            if (maybe_published(r)) {
                return 0;
            }
            return fail(r, EXIT_END, "end of stream: the writers closed it and it is drained");
        }
        if (now_ns() >= next_check) {
            next_check = now_ns() + SLICE_NS;
            if ((result = check_writers(r)) < 0) {
                return result;
            }
        }
        struct timespec slice = {0, SLICE_NS};
        sys_futex(&r->control->frames, FUTEX_WAIT, observed, &slice);
        if ((result = check_size(r)) < 0) { /* truncated meanwhile: a look would fault */
            return result;
        }
    }
}

static int print_frame(const struct frame *frame, int hash) {
    int written;
    if (hash) {
        written = printf("seq=%" PRIu64 " bytes=%" PRIu64 " fnv1a64=%016" PRIx64 "\n", frame->seq,
                         frame->bytes, fnv1a64(frame->start, frame->bytes));
    } else {
        written = printf("seq=%" PRIu64 " bytes=%" PRIu64 "\n", frame->seq, frame->bytes);
    }
    return written < 0 ? -1 : 0;
}

static int read_frames(struct ring *r, uint64_t count, int hash) {
    for (uint64_t got = 0; got < count;) {
        int result = stopped(r);
        if (result < 0) {
            return result;
        }
        struct frame frame;
        result = take(r, &frame);
        if (result < 0) {
            return result;
        }
        if (result == 0) {
            if ((result = wait_for_frame(r)) < 0) {
                return result;
            }
            continue;
        }
        uncount_self(r);
        /* The line is written while the frame is held: a reader stuck writing it holds the
         * frame, as a slow consumer would. */
        int printed = print_frame(&frame, hash);
        release(r, frame.seq);
        if (printed < 0) {
            result = stopped(r);
            return result < 0 ? result
                              : fail(r, EXIT_DAMAGED, "cannot write to stdout: %s",
                                     strerror(errno));
        }
        got++;
    }
    return 0;
}

/* ---- main --------------------------------------------------------------------------- */

static int valid_name(const char *name) {
    size_t length = strlen(name);
    if (length < 1 || length > SHMRING_MAX_NAME || name[0] == '.' || name[0] == '-') {
        return 0;
    }
    for (size_t i = 0; i < length; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-')) {
            return 0;
        }
    }
    return 1;
}

static int usage(const char *message) {
    fprintf(stderr,
            "shmring-read: %s\n"
            "usage: shmring-read [--no-hash] [--owner UID] NAME COUNT\n"
            "  reads COUNT frames published to ring NAME after it joined, printing\n"
            "  seq=<n> bytes=<n> fnv1a64=<16 hex digits> for each; the ring must belong\n"
            "  to this user or root, or to UID if given\n",
            message);
    return EXIT_USAGE;
}

/* A uid written in decimal digits; 0 if `text` is not one. */
static int parse_uid(const char *text, uid_t *uid) {
    char *end = NULL;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 10);
    if (text[0] < '0' || text[0] > '9' || errno != 0 || *end != '\0' || value >= (uid_t)-1) {
        return 0;
    }
    *uid = (uid_t)value;
    return 1;
}

/* Standard descriptors the caller closed are opened on /dev/null: else the ring's file
 * would get the lowest free one, and this program's output would be written into it. */
static int keep_standard_descriptors(void) {
    for (int fd = 0; fd <= 2; fd++) {
        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF &&
            open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY) != fd) {
            return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    if (keep_standard_descriptors() < 0) {
        return EXIT_DAMAGED; /* (nowhere to say so) */
    }
    struct ring ring;
    memset(&ring, 0, sizeof ring);
    int hash = 1, first = 1;
    for (; first < argc && strncmp(argv[first], "--", 2) == 0; first++) {
        if (strcmp(argv[first], "--no-hash") == 0) {
            hash = 0;
        } else if (strcmp(argv[first], "--owner") == 0 && first + 1 < argc &&
                   parse_uid(argv[first + 1], &ring.owner)) {
            ring.owner_given = 1;
            first++;
        } else {
            return usage("options are --no-hash and --owner UID (a number)");
        }
    }
    if (argc - first != 2) {
        return usage("expected a ring name and a frame count");
    }
    const char *name = argv[first];
    char *end = NULL;
    errno = 0;
    unsigned long long count = strtoull(argv[first + 1], &end, 10);
    if (!valid_name(name)) {
        return usage("a ring name is 1-64 characters of [A-Za-z0-9_.-], not starting with "
                     "'.' or '-'");
    }
    if (errno != 0 || end == argv[first + 1] || *end != '\0' || count < 1 ||
        argv[first + 1][0] == '-') {
        return usage("COUNT must be a whole number of frames, at least 1");
    }
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_signal; /* no SA_RESTART: a signal ends the futex sleep */
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
    signal(SIGPIPE, SIG_IGN); /* a closed stdout is an error we report, after leaving */

    ring.name = name;
    ring.fd = -1;
    int result = attach(&ring);
    if (result >= 0) {
        result = join(&ring);
        if (result >= 0) {
            result = read_frames(&ring, count, hash);
            int left = leave(&ring);
            result = result < 0 ? result : left;
        }
    }
    detach(&ring);
    if (result <= -EXIT_SIGNAL_BASE) {
        fprintf(stderr, "shmring-read: ring '%s': interrupted by signal %d; left the ring\n",
                name, -result - EXIT_SIGNAL_BASE);
    }
    if (fflush(stdout) != 0 && result >= 0) {
        result = fail(&ring, EXIT_DAMAGED, "cannot write to stdout: %s", strerror(errno));
    }
    return result < 0 ? -result : 0;
}
