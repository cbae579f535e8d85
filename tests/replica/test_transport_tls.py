"""The peer transport with peer TLS (etcd's --peer-* flags), over real TCP on 127.0.0.1.

Raft batches and a snapshot travel over TLS between two transports that
present certificates of one CA; a transport whose certificate another CA
signed delivers nothing, and neither does a plaintext one.
"""

import asyncio

import pytest
from test_transport import FAST_REDIAL, Inbox, heartbeat

from shards.raft.messages import Message, MessageType
from shards.raft.storage import ConfState, Entry, Snapshot, SnapshotMeta
from shards.transport import PeerTransport
from tessera.api.tls import TLSFiles
from tessera.certs import issue, make_authority


@pytest.fixture(scope="module")
def peer_tls(tmp_path_factory):
    """{name: TLSFiles}: two members of one CA, and a stranger whose CA they do not trust."""
    directory = tmp_path_factory.mktemp("certs")
    ca, other_ca = make_authority(directory), make_authority(directory, "other-ca", "another CA")
    settings = {}
    for name, authority in (("a", ca), ("b", ca), ("stranger", other_ca)):
        pair = issue(authority, directory, name, f"member {name}", ["127.0.0.1"])
        settings[name] = TLSFiles(str(pair.cert_file), str(pair.key_file), str(authority.cert_file), True)
    return settings


async def started(member_id, inbox, tls):
    transport = PeerTransport(member_id, "127.0.0.1:0", inbox, tls=tls, **FAST_REDIAL)
    await transport.start()
    return transport


def test_batches_and_a_snapshot_travel_over_tls(peer_tls):
    async def scenario():
        inbox_a, inbox_b = Inbox(), Inbox()
        delivered: asyncio.Future = asyncio.get_running_loop().create_future()
        a = await started(1, inbox_a, peer_tls["a"])
        b = await started(2, inbox_b, peer_tls["b"])
        a.on_snapshot_sent = lambda member, failed: delivered.set_result((member, failed))
        try:
            a.set_peer(2, f"127.0.0.1:{b.port}")
            b.set_peer(1, f"127.0.0.1:{a.port}")
            entries = [Entry(3, i, 0, b"x" * 1000) for i in range(1, 201)]
            a.send([Message(MessageType.APP, to=2, frm=1, term=3, index=0, entries=entries), heartbeat(2, 4)])
            b.send([heartbeat(1, 5)])
            await inbox_b.wait_for(2, timeout=30)  # TLS handshakes on a loaded machine take their time
            await inbox_a.wait_for(1, timeout=30)
            assert list(inbox_b.messages[0].entries) == entries
            assert inbox_b.messages[1] == heartbeat(2, 4)
            assert inbox_a.messages == [heartbeat(1, 5)]
            data = bytes(range(256)) * 8192  # 2 MiB, many chunks
            snapshot = Snapshot(SnapshotMeta(10, 3, ConfState((1, 2))), data)
            a.send([Message(MessageType.SNAP, to=2, frm=1, term=3, snapshot=snapshot)])
            await inbox_b.wait_for(3, timeout=30)
            assert inbox_b.messages[2].snapshot.data == data
            assert await asyncio.wait_for(delivered, 30) == (2, False)
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize("sender", ["stranger", "plaintext"])
def test_a_peer_without_a_trusted_certificate_delivers_nothing(peer_tls, sender):
    async def scenario():
        inbox_b = Inbox()
        b = await started(2, inbox_b, peer_tls["b"])
        a = await started(1, Inbox(), None if sender == "plaintext" else peer_tls[sender])
        try:
            a.set_peer(2, f"127.0.0.1:{b.port}")
            deadline = asyncio.get_running_loop().time() + 10
            term = 0
            while a.stats(2).dials < 3:  # three connections made and lost, a heartbeat sent on each
                assert asyncio.get_running_loop().time() < deadline, "the sender stopped dialling"
                term += 1
                a.send([heartbeat(2, term)])
                await asyncio.sleep(0.02)
            assert inbox_b.messages == []
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(scenario())
