// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.27;

import {NodeRegistry} from "./NodeRegistry.sol";

/// @title UsageAnchor
/// @notice Merkle roots of each node's usage log. A node anchors its events in order:
/// every batch starts right after the node's previous batch, so the anchors of one node
/// cover sequence numbers 1..lastSeq with no gap or overlap. Only active nodes of the
/// registry may anchor or record usage.
contract UsageAnchor {
    NodeRegistry public immutable registry;

    /// @notice The last sequence number anchored by each node (0 before its first anchor).
    mapping(address node => uint64) public lastSeq;
    /// @notice The node that anchored each root; the zero address if none did.
    mapping(bytes32 root => address node) public anchoredBy;
    /// @notice The number of events each node recorded one by one with recordUsage.
    mapping(address node => uint64) public usageCount;

    event Anchored(
        address indexed node, bytes32 indexed root, uint64 fromSeq, uint64 toSeq, uint64 count
    );
    event UsageRecorded(address indexed node, bytes32 indexed eventHash, uint64 seq);

    error NodeNotActive(address node);
    error EmptyRoot();
    error EmptyEventHash();
    error AnchorOutOfSequence(address node, uint64 expectedFromSeq, uint64 fromSeq);
    error InvalidRange(uint64 fromSeq, uint64 toSeq);
    error CountMismatch(uint64 count, uint64 expected);
    error RootAlreadyAnchored(bytes32 root, address node);

    modifier onlyActiveNode() {
        require(registry.isActive(msg.sender), NodeNotActive(msg.sender));
        _;
    }

    constructor(NodeRegistry registry_) {
        registry = registry_;
    }

    /// @notice Anchors the Merkle root of the caller's events fromSeq..toSeq (inclusive).
    /// fromSeq must equal the caller's lastSeq + 1 and count must equal toSeq - fromSeq + 1.
    function anchor(bytes32 root, uint64 fromSeq, uint64 toSeq, uint64 count)
        external
        onlyActiveNode
    {
        require(root != bytes32(0), EmptyRoot());
        uint64 expected = lastSeq[msg.sender] + 1;
        require(fromSeq == expected, AnchorOutOfSequence(msg.sender, expected, fromSeq));
        require(toSeq >= fromSeq, InvalidRange(fromSeq, toSeq));
        require(count == toSeq - fromSeq + 1, CountMismatch(count, toSeq - fromSeq + 1));
        address holder = anchoredBy[root];
        require(holder == address(0), RootAlreadyAnchored(root, holder));

        lastSeq[msg.sender] = toSeq;
        anchoredBy[root] = msg.sender;
        emit Anchored(msg.sender, root, fromSeq, toSeq, count);
    }

    /// @notice Records one usage event on chain: the per-event baseline to anchoring.
    function recordUsage(bytes32 eventHash) external onlyActiveNode {
        require(eventHash != bytes32(0), EmptyEventHash());
        uint64 seq = usageCount[msg.sender] + 1;
        usageCount[msg.sender] = seq;
        emit UsageRecorded(msg.sender, eventHash, seq);
    }
}
