/* shmring_layout.h: the bytes of a shmring segment, format version 2.0, for C11.
 *
 * Written from docs/FORMAT.md, which is the reference: every struct below is one of its
 * tables, and a _Static_assert pins each field's offset to the number FORMAT.md gives, so a
 * compiler that lays a struct out differently refuses to build. tests/test_c_reader.py
 * parses this file and checks its constants and offsets against FORMAT.md's tables and
 * src/shmring/_layout.py.
 *
 * Everything is little-endian; every mutable field is a u64 that shmring processes access
 * atomically (see FORMAT.md, "Memory ordering"): use __atomic loads and stores on them.
 */
#ifndef SHMRING_LAYOUT_H
#define SHMRING_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the shmring format is little-endian (docs/FORMAT.md)"
#endif

/* ---- version and limits ------------------------------------------------------------- */
#define SHMRING_MAGIC "\x93SHMRING"
#define SHMRING_MAGIC_BYTES 8
#define SHMRING_VERSION_MAJOR 2
#define SHMRING_VERSION_MINOR 1
#define SHMRING_HEADER_BYTES 256
#define SHMRING_CHECKSUM_OFFSET 248
#define SHMRING_CONTROL_OFFSET 256
#define SHMRING_CONTROL_BYTES 256
#define SHMRING_DESCRIPTORS_OFFSET 512
#define SHMRING_CACHE_LINE 64
#define SHMRING_RECORD_BYTES 64
#define SHMRING_MAX_NDIM 8
#define SHMRING_MAX_DIM ((uint64_t)1 << 40)
#define SHMRING_MAX_SLOTS ((uint64_t)1 << 24)
#define SHMRING_MAX_BUFFERS ((uint64_t)1 << 24)
#define SHMRING_MAX_READERS 1024
#define SHMRING_MAX_WRITERS 1024
#define SHMRING_MAX_META 65536
#define SHMRING_MAX_GROUP_NAME 32
#define SHMRING_NONE UINT64_MAX
#define SHMRING_SEQ_LIMIT ((uint64_t)1 << 62)
#define SHMRING_SHM_PREFIX "/dev/shm/shmring."
#define SHMRING_MAX_NAME 64

#define SHMRING_POLICY_BLOCK 0
#define SHMRING_POLICY_OVERWRITE 1

/* ---- fixed header (bytes 0-255) ------------------------------------------------------ */
struct shmring_header {
    char magic[8];
    uint16_t version_major;
    uint16_t version_minor;
    uint32_t header_bytes;
    uint64_t segment_bytes;
    uint32_t policy;
    uint32_t slots;
    uint32_t buffers;
    uint32_t max_readers;
    uint32_t max_writers;
    uint32_t meta_size;
    uint32_t ndim;
    uint32_t itemsize;
    char dtype[16];
    uint64_t shape[8];
    uint64_t buffer_bytes;
    uint64_t buffer_stride;
    uint64_t control_offset;
    uint64_t descriptors_offset;
    uint64_t descriptor_bytes;
    uint64_t readers_offset;
    uint64_t groups_offset;
    uint64_t writers_offset;
    uint64_t freelist_offset;
    uint64_t data_offset;
    uint64_t creator_pid;
    uint64_t created_ns;
    uint8_t reserved[16];
    uint64_t checksum;
};
_Static_assert(offsetof(struct shmring_header, magic) == 0, "magic");
_Static_assert(offsetof(struct shmring_header, version_major) == 8, "version_major");
_Static_assert(offsetof(struct shmring_header, version_minor) == 10, "version_minor");
_Static_assert(offsetof(struct shmring_header, header_bytes) == 12, "header_bytes");
_Static_assert(offsetof(struct shmring_header, segment_bytes) == 16, "segment_bytes");
_Static_assert(offsetof(struct shmring_header, policy) == 24, "policy");
_Static_assert(offsetof(struct shmring_header, slots) == 28, "slots");
_Static_assert(offsetof(struct shmring_header, buffers) == 32, "buffers");
_Static_assert(offsetof(struct shmring_header, max_readers) == 36, "max_readers");
_Static_assert(offsetof(struct shmring_header, max_writers) == 40, "max_writers");
_Static_assert(offsetof(struct shmring_header, meta_size) == 44, "meta_size");
_Static_assert(offsetof(struct shmring_header, ndim) == 48, "ndim");
_Static_assert(offsetof(struct shmring_header, itemsize) == 52, "itemsize");
_Static_assert(offsetof(struct shmring_header, dtype) == 56, "dtype");
_Static_assert(offsetof(struct shmring_header, shape) == 72, "shape");
_Static_assert(offsetof(struct shmring_header, buffer_bytes) == 136, "buffer_bytes");
_Static_assert(offsetof(struct shmring_header, buffer_stride) == 144, "buffer_stride");
_Static_assert(offsetof(struct shmring_header, control_offset) == 152, "control_offset");
_Static_assert(offsetof(struct shmring_header, descriptors_offset) == 160, "descriptors_offset");
_Static_assert(offsetof(struct shmring_header, descriptor_bytes) == 168, "descriptor_bytes");
_Static_assert(offsetof(struct shmring_header, readers_offset) == 176, "readers_offset");
_Static_assert(offsetof(struct shmring_header, groups_offset) == 184, "groups_offset");
_Static_assert(offsetof(struct shmring_header, writers_offset) == 192, "writers_offset");
_Static_assert(offsetof(struct shmring_header, freelist_offset) == 200, "freelist_offset");
_Static_assert(offsetof(struct shmring_header, data_offset) == 208, "data_offset");
_Static_assert(offsetof(struct shmring_header, creator_pid) == 216, "creator_pid");
_Static_assert(offsetof(struct shmring_header, created_ns) == 224, "created_ns");
_Static_assert(offsetof(struct shmring_header, reserved) == 232, "reserved");
_Static_assert(offsetof(struct shmring_header, checksum) == 248, "checksum");
_Static_assert(sizeof(struct shmring_header) == SHMRING_HEADER_BYTES, "header size");

/* ---- control block (bytes 256-511): u64 words ---------------------------------------- */
struct shmring_control {
    uint64_t head;           /* word 0 */
    uint64_t tail;           /* word 1 */
    uint64_t free_count;     /* word 2 */
    uint64_t next_seq;       /* word 3: sequenced rings: the next number a writer may claim */
    uint64_t reserved4[4];   /* words 4-7 */
    uint64_t lock_owner;     /* word 8 */
    uint64_t flags;          /* word 9 */
    uint64_t writer_mode;    /* word 10 */
    uint64_t writers;        /* word 11 */
    uint64_t readers;        /* word 12 */
    uint64_t membership;     /* word 13 */
    uint64_t reserved14[2];  /* words 14-15 */
    uint64_t reader_waiters; /* word 16: atomic 32-bit adds on the low half */
    uint64_t writer_waiters; /* word 17: atomic 32-bit adds on the low half */
    uint64_t space;          /* word 18: futex word (low half) */
    uint64_t space_wanted;   /* word 19 */
    uint64_t frames;         /* word 20: futex word (low half) */
    uint64_t reserved21[11]; /* words 21-31 */
};
_Static_assert(offsetof(struct shmring_control, head) == 0, "head");
_Static_assert(offsetof(struct shmring_control, tail) == 8, "tail");
_Static_assert(offsetof(struct shmring_control, free_count) == 16, "free_count");
_Static_assert(offsetof(struct shmring_control, next_seq) == 24, "next_seq");
_Static_assert(offsetof(struct shmring_control, lock_owner) == 64, "lock_owner");
_Static_assert(offsetof(struct shmring_control, flags) == 72, "flags");
_Static_assert(offsetof(struct shmring_control, writer_mode) == 80, "writer_mode");
_Static_assert(offsetof(struct shmring_control, writers) == 88, "writers");
_Static_assert(offsetof(struct shmring_control, readers) == 96, "readers");
_Static_assert(offsetof(struct shmring_control, membership) == 104, "membership");
_Static_assert(offsetof(struct shmring_control, reader_waiters) == 128, "reader_waiters");
_Static_assert(offsetof(struct shmring_control, writer_waiters) == 136, "writer_waiters");
_Static_assert(offsetof(struct shmring_control, space) == 144, "space");
_Static_assert(offsetof(struct shmring_control, space_wanted) == 152, "space_wanted");
_Static_assert(offsetof(struct shmring_control, frames) == 160, "frames");
_Static_assert(sizeof(struct shmring_control) == SHMRING_CONTROL_BYTES, "control size");

#define SHMRING_F_CLOSED 1    /* flags: the stream ended (the last writer left cleanly) */
#define SHMRING_F_STARTED 2   /* flags: a writer has joined since the ring was created */
#define SHMRING_F_SEQUENCED 4 /* flags: shared mode, block policy: writers are sequenced */
#define SHMRING_MODE_EXCLUSIVE 0
#define SHMRING_MODE_SHARED 1

/* ---- descriptor (descriptor_bytes each; user metadata from byte 104) ------------------- */
struct shmring_descriptor {
    uint64_t seq;       /* word 0: written last (release) */
    uint64_t buffer;    /* word 1 */
    uint64_t flags;     /* word 2: DF_* in the low half, metadata bytes in the high half */
    uint64_t timestamp; /* word 3 */
    uint64_t reserved4; /* word 4 */
    uint64_t shape[8];  /* words 5-12: the frame's own shape (DF_OWN_SHAPE) */
};
_Static_assert(offsetof(struct shmring_descriptor, seq) == 0, "seq");
_Static_assert(offsetof(struct shmring_descriptor, buffer) == 8, "buffer");
_Static_assert(offsetof(struct shmring_descriptor, flags) == 16, "flags");
_Static_assert(offsetof(struct shmring_descriptor, timestamp) == 24, "timestamp");
_Static_assert(offsetof(struct shmring_descriptor, shape) == 40, "shape");
_Static_assert(sizeof(struct shmring_descriptor) == 104, "descriptor fixed part");

#define SHMRING_D_META_BYTE_OFFSET 104
#define SHMRING_DF_EVICTED 1
#define SHMRING_DF_OWN_SHAPE 2
#define SHMRING_DF_SKIP 4 /* no frame at this number: readers pass over it, counted dropped */
#define SHMRING_META_LEN_SHIFT 32

/* ---- records (64 bytes each) -------------------------------------------------------- */
struct shmring_reader {
    uint64_t state;    /* word 0 */
    uint64_t token;    /* word 1 */
    uint64_t pid;      /* word 2 */
    uint64_t group;    /* word 3 */
    uint64_t release;  /* word 4 */
    uint64_t dropped;  /* word 5 */
    uint64_t sleeping; /* word 6 */
    uint64_t pinned;   /* word 7 */
};
_Static_assert(offsetof(struct shmring_reader, state) == 0, "state");
_Static_assert(offsetof(struct shmring_reader, token) == 8, "token");
_Static_assert(offsetof(struct shmring_reader, pid) == 16, "pid");
_Static_assert(offsetof(struct shmring_reader, group) == 24, "group");
_Static_assert(offsetof(struct shmring_reader, release) == 32, "release");
_Static_assert(offsetof(struct shmring_reader, dropped) == 40, "dropped");
_Static_assert(offsetof(struct shmring_reader, sleeping) == 48, "sleeping");
_Static_assert(offsetof(struct shmring_reader, pinned) == 56, "pinned");
_Static_assert(sizeof(struct shmring_reader) == SHMRING_RECORD_BYTES, "reader record size");

struct shmring_group {
    uint64_t state;   /* word 0 */
    uint64_t cursor;  /* word 1 */
    uint64_t members; /* word 2 */
    char name[32];    /* bytes 24-55 */
    uint64_t reserved7;
};
_Static_assert(offsetof(struct shmring_group, state) == 0, "state");
_Static_assert(offsetof(struct shmring_group, cursor) == 8, "cursor");
_Static_assert(offsetof(struct shmring_group, members) == 16, "members");
_Static_assert(offsetof(struct shmring_group, name) == 24, "name");
_Static_assert(sizeof(struct shmring_group) == SHMRING_RECORD_BYTES, "group record size");

struct shmring_writer {
    uint64_t state;       /* word 0 */
    uint64_t token;       /* word 1 */
    uint64_t pid;         /* word 2 */
    uint64_t in_publish;  /* word 3 */
    uint64_t claimed;     /* word 4 */
    uint64_t sleeping;    /* word 5 */
    uint64_t claimed_seq; /* word 6: sequenced rings: the number its claim holds, or NONE */
    uint64_t expedited;   /* word 7: 1 if its process registered for expedited membarrier */
};
_Static_assert(offsetof(struct shmring_writer, state) == 0, "state");
_Static_assert(offsetof(struct shmring_writer, token) == 8, "token");
_Static_assert(offsetof(struct shmring_writer, pid) == 16, "pid");
_Static_assert(offsetof(struct shmring_writer, in_publish) == 24, "in_publish");
_Static_assert(offsetof(struct shmring_writer, claimed) == 32, "claimed");
_Static_assert(offsetof(struct shmring_writer, sleeping) == 40, "sleeping");
_Static_assert(offsetof(struct shmring_writer, claimed_seq) == 48, "claimed_seq");
_Static_assert(offsetof(struct shmring_writer, expedited) == 56, "expedited");
_Static_assert(sizeof(struct shmring_writer) == SHMRING_RECORD_BYTES, "writer record size");

#define SHMRING_STATE_FREE 0
#define SHMRING_STATE_ACTIVE 1

/* ---- OFD lock bytes (kernel locks on the segment file, not bytes in it) ---------------- */
#define SHMRING_LOCK_HEADER 0
#define SHMRING_LOCK_CREATOR 1
#define SHMRING_LOCK_WRITER_BASE 4096
#define SHMRING_LOCK_READER_BASE 8192

#endif
