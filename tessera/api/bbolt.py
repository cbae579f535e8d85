"""bbolt's file format: a reader that checks every page it touches, and a writer that builds one.

etcd keeps its backend in a bbolt (go.etcd.io/bbolt) file, and its snapshot is
that file with a sha256 after it. This module reads and writes the format
itself; it imports nothing of ours, so the router (export) and the command line
(import, status) can both use it (tessera/api holds the file and wire
definitions every layer shares).

The format (bbolt 1.3, as etcd 3.4 and 3.5 write it; integers little-endian):

    The file is pages of `page_size` bytes (the size is in the meta page; 4096
    on the hosts etcd runs on). Every page starts with a 16-byte header:
        id u64 (its own page number), flags u16, count u16, overflow u32
    A page that does not fit spans `overflow` more pages after it.

    flags 0x04 meta: pages 0 and 1. After the header:
        magic u32 (0xED0CDAED), version u32 (2), page_size u32, flags u32,
        root bucket (root page u64, sequence u64), freelist page u64,
        pgid u64 (pages in use: the high-water mark), txid u64,
        checksum u64 (FNV-1a 64 of the 56 bytes before it)
      A commit writes the meta page txid % 2, so the valid meta with the
      higher txid is the current one; the other is the one before it.
    flags 0x10 freelist: `count` page ids u64 (sorted); if count is 0xFFFF
      the first u64 is the real count. A freelist page id of 2^64-1 means
      none was written (NoFreelistSync): the free pages are the unreachable ones.
    flags 0x02 leaf: `count` elements of 16 bytes
        flags u32 (1: the value is a bucket), pos u32, ksize u32, vsize u32
      then the keys and values; an element's key starts `pos` bytes after the
      element itself, and its value right after the key.
    flags 0x01 branch: `count` elements of 16 bytes
        pos u32, ksize u32, child page u64
      each child's first key is the element's key.

    A bucket is a B+tree of branch and leaf pages, keys in byte order. Its
    value in the parent leaf is a 16-byte header (root page, sequence). A root
    page of 0 marks an inline bucket: a small bucket without sub-buckets whose
    one leaf page (a page header with id 0, then the elements) follows the
    header inside the value. The meta page's root bucket holds the top-level
    buckets (etcd's `key`, `meta`, `lease`, ...).

Every page below the high-water mark is reachable exactly once (a meta page,
the freelist, a page of some bucket's tree) or free; `BoltReader.check` checks
that as bbolt's Tx.Check does (etcdutl checks it before `snapshot status`).

Damage is a `BoltFormatError` naming the page, never an IndexError or a hang:
every page read checks its bounds, its id and its kind, every element its
place in the page, keys their order, and a walk down a tree its depth.

The writer builds a new file in one pass, children before parents, each leaf
page as full as it can be (bbolt reads any fill); buckets small enough are
written inline as bbolt writes them. Its free list is empty: every page it
allocates is used.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Iterable, Iterator, Union

MAGIC = 0xED0CDAED
VERSION = 2
PAGE_BYTES_DEFAULT = 4096
NO_FREELIST = 2**64 - 1  # meta.freelist when the free list is not written (NoFreelistSync)

BRANCH_PAGE = 0x01
LEAF_PAGE = 0x02
META_PAGE = 0x04
FREELIST_PAGE = 0x10
BUCKET_LEAF = 0x01  # a leaf element's flag: its value is a bucket
FREELIST_COUNT_OVERFLOW = 0xFFFF  # page.count when the real count is the first u64

KEY_BYTES_MAX = 32768  # bbolt's MaxKeySize
VALUE_BYTES_MAX = 2**31 - 2  # bbolt's MaxValueSize
# A tree (or a nesting of buckets) deeper than this is a loop in damaged pages:
# 64 levels of even 2 keys per page are more keys than any file can hold, and
# etcd nests no buckets at all.
TREE_DEPTH_MAX = 64
# The smallest and largest page sizes bbolt takes from a meta page (a 64 KiB
# page is the largest any OS bbolt runs on uses).
PAGE_BYTES_MIN = 512
PAGE_BYTES_MAX = 65536

_PAGE_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
_META = struct.Struct("<IIIIQQQQQQ")  # magic, version, page size, flags, root, sequence, freelist, pgid, txid, checksum
_META_CHECKED_BYTES = _META.size - 8  # the checksum covers what comes before it
_LEAF_ELEMENT = struct.Struct("<IIII")  # flags, pos, ksize, vsize
_BRANCH_ELEMENT = struct.Struct("<IIQ")  # pos, ksize, child page
_BUCKET_HEADER = struct.Struct("<QQ")  # root page, sequence
_PGID = struct.Struct("<Q")
PAGE_HEADER_BYTES = _PAGE_HEADER.size
ELEMENT_BYTES = _LEAF_ELEMENT.size  # both kinds of element are 16 bytes
BUCKET_HEADER_BYTES = _BUCKET_HEADER.size

_PAGE_KINDS = {BRANCH_PAGE: "branch", LEAF_PAGE: "leaf", META_PAGE: "meta", FREELIST_PAGE: "freelist"}


class BoltFormatError(Exception):
    """The bytes are not a whole, intact bbolt file; the message names the page and what is wrong."""


def fnv1a_64(data: bytes) -> int:
    """FNV-1a, 64 bits: the meta page's checksum."""
    checksum = 0xCBF29CE484222325
    for byte in data:
        checksum = ((checksum ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return checksum


@dataclass(frozen=True)
class Meta:
    page_size: int
    flags: int
    root: int  # the root bucket's root page
    sequence: int
    freelist: int
    pgid: int  # pages in use (the high-water mark)
    txid: int

    def pack(self) -> bytes:
        fields = (MAGIC, VERSION, self.page_size, self.flags, self.root, self.sequence, self.freelist,
                  self.pgid, self.txid)
        body = _META.pack(*fields, 0)[:_META_CHECKED_BYTES]
        return body + _PGID.pack(fnv1a_64(body))


def _unpack_meta(data, offset: int, pgid: int) -> Meta:
    """The meta page at `offset`, or BoltFormatError saying why it is not a valid one."""
    if len(data) < offset + PAGE_HEADER_BYTES + _META.size:
        raise BoltFormatError(f"page {pgid}: truncated: the file ends at byte {len(data)} inside the meta page")
    _, flags, _, _ = _PAGE_HEADER.unpack_from(data, offset)
    magic, version, page_size, meta_flags, root, sequence, freelist, high, txid, checksum = \
        _META.unpack_from(data, offset + PAGE_HEADER_BYTES)
    if magic != MAGIC:
        raise BoltFormatError(f"page {pgid}: not a bbolt meta page (magic {magic:#x})")
    if version != VERSION:
        raise BoltFormatError(f"page {pgid}: bbolt format version {version}; this reader reads {VERSION}")
    start = offset + PAGE_HEADER_BYTES
    if checksum != fnv1a_64(bytes(data[start:start + _META_CHECKED_BYTES])):
        raise BoltFormatError(f"page {pgid}: meta checksum mismatch")
    if not flags & META_PAGE:
        raise BoltFormatError(f"page {pgid}: a meta page without the meta flag (flags {flags:#x})")
    if not PAGE_BYTES_MIN <= page_size <= PAGE_BYTES_MAX or page_size & (page_size - 1):
        raise BoltFormatError(f"page {pgid}: page size {page_size} is not one bbolt uses")
    return Meta(page_size, meta_flags, root, sequence, freelist, high, txid)


# --- reading ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    id: int
    flags: int
    count: int
    overflow: int
    data: memoryview  # the page's bytes, overflow pages included (an inline page: the value after the header)

    @property
    def kind(self) -> str:
        return _PAGE_KINDS.get(self.flags, f"unknown<{self.flags:#x}>")


class Bucket:
    """One bucket of a file being read: its keys in order, its values, its sub-buckets.

    A value that is a bucket is given as a Bucket; any other as bytes.
    """

    def __init__(self, reader: BoltReader, name: str, root: int, sequence: int, inline: Page | None,
                 depth: int = 0):
        self._reader = reader
        self.name = name  # for error messages: the path of bucket names from the top
        self.depth = depth  # buckets above it
        self.root = root
        self.sequence = sequence
        self._inline = inline

    def items(self) -> Iterator[tuple[bytes, Union[bytes, Bucket]]]:
        """(key, value or sub-bucket) in key order."""
        for flags, key, value in self._elements():
            yield key, self._reader._open_bucket(self, key, value) if flags & BUCKET_LEAF else value

    def keys(self) -> Iterator[bytes]:
        for _, key, _ in self._elements():
            yield key

    def get(self, key: bytes) -> Union[bytes, Bucket, None]:
        """The value (or sub-bucket) at `key`; None if there is none. Walks one path down the tree."""
        page = self._inline
        depth = 0
        if page is None:
            page = self._reader._tree_page(self.root, self.name, depth)
            while page.flags == BRANCH_PAGE:
                children = self._reader._branch_elements(page)
                # The last child whose first key is at or before `key` (the first if none is).
                child = children[0][1]
                for first_key, pgid in children[1:]:
                    if first_key > key:
                        break
                    child = pgid
                depth += 1
                page = self._reader._tree_page(child, self.name, depth)
        for flags, element_key, value in self._reader._leaf_elements(page):
            if element_key == key:
                return self._reader._open_bucket(self, key, value) if flags & BUCKET_LEAF else value
        return None

    def bucket(self, name: bytes) -> Bucket | None:
        value = self.get(name)
        return value if isinstance(value, Bucket) else None

    def _elements(self) -> Iterator[tuple[int, bytes, bytes]]:
        pages = [self._inline] if self._inline is not None else self._reader._leaves(self.root, self.name)
        last = None
        for page in pages:
            for element in self._reader._leaf_elements(page):
                if last is not None and element[1] <= last:
                    raise BoltFormatError(f"page {page.id}: key {element[1]!r} of bucket {self.name} "
                                          f"is not after the key before it, {last!r}")
                last = element[1]
                yield element

    def _pages(self) -> Iterator[Page]:
        """Every page of this bucket's tree (none for an inline bucket)."""
        if self._inline is None:
            yield from self._reader._walk(self.root, self.name)


class BoltReader:
    """A bbolt file held in `data` (bytes, a memoryview or an mmap), read page by page as asked.

    Opening reads and checks the two meta pages and picks the current one, as
    bbolt does. Bytes after the last page (etcd's sha256, for one) are ignored.
    """

    def __init__(self, data):
        self.data = memoryview(data)
        self.meta = self._current_meta()
        self.page_size = self.meta.page_size
        end = self.meta.pgid * self.page_size
        if len(self.data) < end:
            raise BoltFormatError(f"truncated: the file has {len(self.data)} bytes; its meta page (txid "
                                  f"{self.meta.txid}) says {self.meta.pgid} pages of {self.page_size} bytes")
        if not 2 <= self.meta.root < self.meta.pgid:
            raise BoltFormatError(f"page {self.meta.txid % 2}: the root bucket's page {self.meta.root} "
                                  f"is outside the file's {self.meta.pgid} pages")
        self.root = Bucket(self, "(root)", self.meta.root, self.meta.sequence, None)

    def _current_meta(self) -> Meta:
        metas, problems = [], []
        try:
            metas.append(_unpack_meta(self.data, 0, 0))
        except BoltFormatError as problem:
            problems.append(str(problem))
        # Page 1 is one page in: the size meta 0 gives or, if meta 0 is damaged, any size bbolt uses.
        sizes = [metas[0].page_size] if metas else [PAGE_BYTES_MIN << shift for shift in range(8)]
        for size in sizes:
            try:
                metas.append(_unpack_meta(self.data, size, 1))
                break
            except BoltFormatError as problem:
                if size in (sizes[0], PAGE_BYTES_DEFAULT):
                    problem_page1 = str(problem)
        else:
            problems.append(problem_page1)
        if not metas:
            raise BoltFormatError("not a bbolt file, or both meta pages are damaged: " + "; ".join(problems))
        return max(metas, key=lambda meta: meta.txid)

    # --- pages

    def page(self, pgid: int, context: str = "") -> Page:
        """Page `pgid` with its overflow pages, its header checked against where it is."""
        where = f" ({context})" if context else ""
        if pgid >= self.meta.pgid:
            raise BoltFormatError(f"page {pgid}{where}: beyond the file's {self.meta.pgid} pages")
        start = pgid * self.page_size
        stored_id, flags, count, overflow = _PAGE_HEADER.unpack_from(self.data, start)
        if stored_id != pgid:
            raise BoltFormatError(f"page {pgid}{where}: its header says it is page {stored_id}")
        if pgid + overflow >= self.meta.pgid:
            raise BoltFormatError(f"page {pgid}{where}: {overflow} overflow pages run past the file's "
                                  f"{self.meta.pgid} pages")
        return Page(pgid, flags, count, overflow, self.data[start:start + (overflow + 1) * self.page_size])

    def _tree_page(self, pgid: int, bucket: str, depth: int) -> Page:
        if depth > TREE_DEPTH_MAX:
            raise BoltFormatError(f"page {pgid}: bucket {bucket} is more than {TREE_DEPTH_MAX} levels deep "
                                  f"(its branch pages loop)")
        page = self.page(pgid, f"bucket {bucket}")
        if page.flags not in (BRANCH_PAGE, LEAF_PAGE):
            raise BoltFormatError(f"page {pgid}: a {page.kind} page in bucket {bucket}'s tree")
        if page.count == 0 and page.flags == BRANCH_PAGE:
            raise BoltFormatError(f"page {pgid}: a branch page of bucket {bucket} with no children")
        return page

    def _walk(self, root: int, bucket: str) -> Iterator[Page]:
        """The pages of a tree, parents before their children, children in key order.

        A page met twice (damaged branch pages that loop or share a child) is an error.
        """
        seen: set[int] = set()
        stack = [(root, 0)]
        while stack:
            pgid, depth = stack.pop()
            if pgid in seen:
                raise BoltFormatError(f"page {pgid}: referenced twice in bucket {bucket}'s tree")
            seen.add(pgid)
            page = self._tree_page(pgid, bucket, depth)
            yield page
            if page.flags == BRANCH_PAGE:
                stack.extend((child, depth + 1) for _, child in reversed(self._branch_elements(page)))

    def _leaves(self, pgid: int, bucket: str) -> Iterator[Page]:
        return (page for page in self._walk(pgid, bucket) if page.flags == LEAF_PAGE)

    def _element_bytes(self, page: Page, index: int, pos: int, length: int) -> bytes:
        start = PAGE_HEADER_BYTES + index * ELEMENT_BYTES + pos
        if start + length > len(page.data):
            raise BoltFormatError(f"page {page.id}: element {index} points past the end of its page")
        return bytes(page.data[start:start + length])

    def _check_count(self, page: Page) -> None:
        if PAGE_HEADER_BYTES + page.count * ELEMENT_BYTES > len(page.data):
            raise BoltFormatError(f"page {page.id}: {page.count} elements do not fit in its {len(page.data)} bytes")

    def _branch_elements(self, page: Page) -> list[tuple[bytes, int]]:
        self._check_count(page)
        children = []
        for index in range(page.count):
            pos, ksize, child = _BRANCH_ELEMENT.unpack_from(page.data, PAGE_HEADER_BYTES + index * ELEMENT_BYTES)
            key = self._element_bytes(page, index, pos, ksize)
            if children and key <= children[-1][0]:
                raise BoltFormatError(f"page {page.id}: branch keys out of order at element {index}")
            children.append((key, child))
        return children

    def _leaf_elements(self, page: Page) -> Iterator[tuple[int, bytes, bytes]]:
        self._check_count(page)
        for index in range(page.count):
            flags, pos, ksize, vsize = _LEAF_ELEMENT.unpack_from(page.data, PAGE_HEADER_BYTES + index * ELEMENT_BYTES)
            both = self._element_bytes(page, index, pos, ksize + vsize)
            yield flags, both[:ksize], both[ksize:]

    def _open_bucket(self, parent: Bucket, key: bytes, value: bytes) -> Bucket:
        name = key.decode(errors="backslashreplace") if parent.name == "(root)" else \
            f"{parent.name}/{key.decode(errors='backslashreplace')}"
        where = f"page {parent._inline.id if parent._inline else parent.root}"
        if parent.depth >= TREE_DEPTH_MAX:
            raise BoltFormatError(f"{where}: bucket {name} is nested more than {TREE_DEPTH_MAX} deep "
                                  f"(its bucket headers loop)")
        if len(value) < BUCKET_HEADER_BYTES:
            raise BoltFormatError(f"{where}: bucket {name}'s header is {len(value)} bytes, not {BUCKET_HEADER_BYTES}")
        root, sequence = _BUCKET_HEADER.unpack_from(value)
        if root != 0:
            return Bucket(self, name, root, sequence, None, parent.depth + 1)
        page_bytes = memoryview(value)[BUCKET_HEADER_BYTES:]
        if len(page_bytes) < PAGE_HEADER_BYTES:
            raise BoltFormatError(f"{where}: inline bucket {name} is cut short")
        _, flags, count, overflow = _PAGE_HEADER.unpack_from(page_bytes)
        if flags != LEAF_PAGE:
            raise BoltFormatError(f"{where}: inline bucket {name} is not a leaf page (flags {flags:#x})")
        return Bucket(self, name, 0, sequence, Page(0, flags, count, overflow, page_bytes), parent.depth + 1)

    # --- the whole file

    def buckets(self) -> Iterator[tuple[bytes, Bucket]]:
        """The top-level buckets in name order."""
        for name, value in self.root.items():
            if not isinstance(value, Bucket):
                raise BoltFormatError(f"page {self.meta.root}: top-level key {name!r} is not a bucket")
            yield name, value

    def bucket(self, name: bytes) -> Bucket | None:
        return self.root.bucket(name)

    def freelist(self) -> list[int]:
        """The free page ids the file records (empty when none is written: see `check`)."""
        if self.meta.freelist == NO_FREELIST:
            return []
        page = self.page(self.meta.freelist, "the freelist")
        if page.flags != FREELIST_PAGE:
            raise BoltFormatError(f"page {page.id}: the meta page's freelist is a {page.kind} page")
        first, count = 0, page.count
        if count == FREELIST_COUNT_OVERFLOW:
            first, count = 1, _PGID.unpack_from(page.data, PAGE_HEADER_BYTES)[0]
        if PAGE_HEADER_BYTES + (first + count) * _PGID.size > len(page.data):
            raise BoltFormatError(f"page {page.id}: a freelist of {count} pages does not fit in its "
                                  f"{page.overflow + 1} pages")
        ids = struct.unpack_from(f"<{count}Q", page.data, PAGE_HEADER_BYTES + first * _PGID.size)
        return sorted(ids)

    def check(self) -> list[str]:
        """What is wrong with the file's pages, as bbolt's Tx.Check reports it; [] when nothing is.

        Every page below the high-water mark must be reachable once or free.
        Damage that stops the walk (a page that cannot be read) raises
        BoltFormatError instead.
        """
        problems = []
        freed: set[int] = set()
        for pgid in self.freelist():
            if pgid in freed:
                problems.append(f"page {pgid}: already freed")
            freed.add(pgid)
        reachable = {0, 1}
        if self.meta.freelist != NO_FREELIST:
            reachable.update(range(self.meta.freelist, self.meta.freelist + self.page(self.meta.freelist).overflow + 1))
        pending = [self.root]
        while pending:
            bucket = pending.pop()
            for page in bucket._pages():
                for pgid in range(page.id, page.id + page.overflow + 1):
                    if pgid in reachable:
                        problems.append(f"page {pgid}: multiple references")
                    reachable.add(pgid)
                if page.id in freed:
                    problems.append(f"page {page.id}: reachable freed")
            pending.extend(value for _, value in bucket.items() if isinstance(value, Bucket))
        if self.meta.freelist != NO_FREELIST:
            problems.extend(f"page {pgid}: unreachable unfreed" for pgid in range(self.meta.pgid)
                            if pgid not in reachable and pgid not in freed)
        return problems


# --- writing ---------------------------------------------------------------------------


Value = Union[bytes, "BucketSpec"]


@dataclass
class BucketSpec:
    """A bucket to write: its (key, value or sub-bucket) pairs in strictly ascending key order.

    `items` may be any iterable (a generator, say): the writer consumes it once.
    """

    items: Iterable[tuple[bytes, Value]] = ()
    sequence: int = 0


@dataclass
class _Level:
    """The page being filled at one level of a tree being built."""

    elements: list = field(default_factory=list)  # leaf: (flags, key, value); branch: (key, child page)
    size_bytes: int = PAGE_HEADER_BYTES


class BoltWriter:
    """Writes a new bbolt file to a seekable binary file, one page after another.

    `write(root_buckets)` takes the top-level buckets as (name, BucketSpec)
    pairs in name order; pages 0 and 1 (the metas) and 2 (the empty freelist)
    are written last, once the root bucket's page is known.
    """

    def __init__(self, file: BinaryIO, page_size: int = PAGE_BYTES_DEFAULT, txid: int = 1):
        if not PAGE_BYTES_MIN <= page_size <= PAGE_BYTES_MAX or page_size & (page_size - 1):
            raise ValueError(f"page size {page_size} is not one bbolt uses")
        self._file = file
        self.page_size = page_size
        self.txid = txid
        self._start = file.tell()
        self._next_pgid = 3  # 0 and 1: the metas, 2: the freelist
        self.inline_bytes_max = page_size // 4  # bbolt inlines a bucket up to this size

    def write(self, root_buckets: Iterable[tuple[bytes, BucketSpec]]) -> Meta:
        self._file.write(bytes(3 * self.page_size))  # the metas and freelist, filled in at the end
        root = self._write_tree(root_buckets, "(root)")
        high = self._next_pgid
        end = self._file.tell()
        self._file.seek(self._start)
        for pgid, txid in ((0, self.txid - 1), (1, self.txid)):  # both valid; page 1 the current
            meta = Meta(self.page_size, 0, root, 0, 2, high, txid)
            self._file.write(self._padded(_PAGE_HEADER.pack(pgid, META_PAGE, 0, 0) + meta.pack()))
        self._file.write(self._padded(_PAGE_HEADER.pack(2, FREELIST_PAGE, 0, 0)))
        self._file.seek(end)
        return Meta(self.page_size, 0, root, 0, 2, high, self.txid)

    def _padded(self, page: bytes) -> bytes:
        return page + bytes(-len(page) % self.page_size)

    def _write_page(self, flags: int, body_elements: bytes, body_data: bytes, count: int) -> int:
        """Write one page (and its overflow); its page id."""
        size = PAGE_HEADER_BYTES + len(body_elements) + len(body_data)
        pages = -(-size // self.page_size)
        pgid = self._next_pgid
        self._next_pgid += pages
        self._file.write(self._padded(_PAGE_HEADER.pack(pgid, flags, count, pages - 1) + body_elements + body_data))
        return pgid

    @staticmethod
    def _leaf_body(elements) -> tuple[bytes, bytes]:
        """The element array and the data of a leaf page of `elements` (flags, key, value)."""
        packed, data = bytearray(), bytearray()
        for index, (flags, key, value) in enumerate(elements):
            pos = (len(elements) - index) * ELEMENT_BYTES + len(data)  # from this element to its key
            packed += _LEAF_ELEMENT.pack(flags, pos, len(key), len(value))
            data += key + value
        return bytes(packed), bytes(data)

    @staticmethod
    def _branch_body(elements) -> tuple[bytes, bytes]:
        packed, data = bytearray(), bytearray()
        for index, (key, child) in enumerate(elements):
            pos = (len(elements) - index) * ELEMENT_BYTES + len(data)
            packed += _BRANCH_ELEMENT.pack(pos, len(key), child)
            data += key
        return bytes(packed), bytes(data)

    def _leaf_value(self, key: bytes, value: Value, bucket: str) -> tuple[int, bytes, bytes]:
        """One leaf element (flags, key, value); a sub-bucket is written first, its header is the value."""
        if not key:
            raise ValueError(f"bucket {bucket}: an empty key")
        if len(key) > KEY_BYTES_MAX:
            raise ValueError(f"bucket {bucket}: a key of {len(key)} bytes (bbolt's limit is {KEY_BYTES_MAX})")
        if isinstance(value, BucketSpec):
            name = key.decode(errors="backslashreplace")
            return BUCKET_LEAF, key, self._write_bucket(value, name if bucket == "(root)" else f"{bucket}/{name}")
        value = bytes(value)
        if len(value) > VALUE_BYTES_MAX:
            raise ValueError(f"bucket {bucket}: a value of {len(value)} bytes (bbolt's limit is {VALUE_BYTES_MAX})")
        return 0, key, value

    def _write_bucket(self, spec: BucketSpec, name: str) -> bytes:
        """Write a bucket; the value its parent holds: its header, and its page if it is inline."""
        elements, size, items = [], PAGE_HEADER_BYTES, iter(spec.items)
        # Collect while the bucket may still be inline: no sub-buckets, small enough.
        for key, value in items:
            element = self._leaf_value(key, value, name)
            elements.append(element)
            size += ELEMENT_BYTES + len(key) + len(element[2])
            if element[0] & BUCKET_LEAF or size > self.inline_bytes_max:
                break
        else:
            self._check_order(elements, name)
            inline = _PAGE_HEADER.pack(0, LEAF_PAGE, len(elements), 0) + b"".join(self._leaf_body(elements))
            return _BUCKET_HEADER.pack(0, spec.sequence) + inline
        root = self._write_tree(items, name, first=elements)
        return _BUCKET_HEADER.pack(root, spec.sequence)

    @staticmethod
    def _check_order(elements, bucket: str) -> None:
        for before, after in zip(elements, elements[1:]):
            if after[1] <= before[1]:
                raise ValueError(f"bucket {bucket}: key {after[1]!r} is not after {before[1]!r}")

    def _write_tree(self, items, name: str, first=()) -> int:
        """Write a bucket's leaf pages, then its branch levels; the root page's id."""
        leaf = _Level()
        parents: list[tuple[bytes, int]] = []  # (first key, page) of each leaf written
        last_key = None

        def add(element) -> None:
            nonlocal leaf, last_key
            if last_key is not None and element[1] <= last_key:
                raise ValueError(f"bucket {name}: key {element[1]!r} is not after {last_key!r}")
            last_key = element[1]
            grown = ELEMENT_BYTES + len(element[1]) + len(element[2])
            if leaf.elements and leaf.size_bytes + grown > self.page_size:
                parents.append((leaf.elements[0][1], self._write_page(LEAF_PAGE, *self._leaf_body(leaf.elements),
                                                                      len(leaf.elements))))
                leaf = _Level()
            leaf.elements.append(element)
            leaf.size_bytes += grown

        for element in first:
            add(element)
        for key, value in items:
            add(self._leaf_value(key, value, name))
        # The last (or only, perhaps empty) leaf.
        parents.append((leaf.elements[0][1] if leaf.elements else b"",
                        self._write_page(LEAF_PAGE, *self._leaf_body(leaf.elements), len(leaf.elements))))
        while len(parents) > 1:
            parents = self._write_branch_level(parents)
        return parents[0][1]

    def _write_branch_level(self, children: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
        written, level = [], _Level()
        for key, child in children:
            grown = ELEMENT_BYTES + len(key)
            if level.elements and level.size_bytes + grown > self.page_size:
                written.append((level.elements[0][0], self._write_page(
                    BRANCH_PAGE, *self._branch_body(level.elements), len(level.elements))))
                level = _Level()
            level.elements.append((key, child))
            level.size_bytes += grown
        written.append((level.elements[0][0], self._write_page(
            BRANCH_PAGE, *self._branch_body(level.elements), len(level.elements))))
        return written


def write_bolt(file: BinaryIO, root_buckets: Iterable[tuple[bytes, BucketSpec]],
               page_size: int = PAGE_BYTES_DEFAULT) -> Meta:
    """Write a bbolt file holding `root_buckets` ((name, BucketSpec) in name order) into `file`."""
    return BoltWriter(file, page_size).write(root_buckets)
