// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.27;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title NodeRegistry
/// @notice The consortium's list of nodes: each ledger account with its city id, Ed25519
/// public key (for signed HTTP requests), endpoint and role. Only DEFAULT_ADMIN_ROLE
/// changes it. Revocation is final: a revoked account cannot be registered again, and its
/// city id becomes free for a new account.
contract NodeRegistry is AccessControl {
    uint8 public constant ROLE_CITY_NODE = 1;
    uint8 public constant ROLE_HUB = 2;
    uint8 public constant ROLE_REGULATOR = 3;

    struct Node {
        string city;
        bytes32 pubkey;
        string endpoint;
        uint8 role;
        bool active;
    }

    mapping(address account => Node) private _nodes;
    mapping(bytes32 cityHash => address account) private _cityAccount;
    address[] private _accounts;

    event NodeRegistered(
        address indexed account, string city, bytes32 pubkey, string endpoint, uint8 role
    );
    event NodeRevoked(address indexed account, string city);

    error InvalidAccount(address account);
    error InvalidRole(uint8 role);
    error EmptyCity();
    error EmptyPubkey();
    error AccountAlreadyRegistered(address account);
    error CityAlreadyRegistered(string city, address account);
    error NodeNotRegistered(address account);
    error NodeAlreadyRevoked(address account);

    constructor(address admin) {
        require(admin != address(0), InvalidAccount(admin));
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    /// @notice Adds an active node. Reverts when the account was ever registered or when
    /// an active node already uses the city id.
    function register(
        address account,
        string calldata city,
        bytes32 pubkey,
        string calldata endpoint,
        uint8 role
    ) external onlyRole(DEFAULT_ADMIN_ROLE) {
        require(account != address(0), InvalidAccount(account));
        require(bytes(city).length > 0, EmptyCity());
        require(pubkey != bytes32(0), EmptyPubkey());
        require(role >= ROLE_CITY_NODE && role <= ROLE_REGULATOR, InvalidRole(role));
        require(_nodes[account].role == 0, AccountAlreadyRegistered(account));
        bytes32 cityHash = keccak256(bytes(city));
        address holder = _cityAccount[cityHash];
        require(
            holder == address(0) || !_nodes[holder].active,
            CityAlreadyRegistered(city, holder)
        );

        _nodes[account] = Node(city, pubkey, endpoint, role, true);
        _cityAccount[cityHash] = account;
        _accounts.push(account);
        emit NodeRegistered(account, city, pubkey, endpoint, role);
    }

    /// @notice Marks a node inactive for good: it can no longer anchor usage.
    function revoke(address account) external onlyRole(DEFAULT_ADMIN_ROLE) {
        Node storage node = _nodes[account];
        require(node.role != 0, NodeNotRegistered(account));
        require(node.active, NodeAlreadyRevoked(account));
        node.active = false;
        emit NodeRevoked(account, node.city);
    }

    /// @notice Returns the node of `account`; role 0 means the account was never registered.
    function getNode(address account) external view returns (Node memory) {
        return _nodes[account];
    }

    /// @notice Returns the account registered last under `city` (active or revoked), or
    /// the zero address if none was.
    function accountOfCity(string calldata city) external view returns (address) {
        return _cityAccount[keccak256(bytes(city))];
    }

    /// @notice Returns every account ever registered, in registration order.
    function accounts() external view returns (address[] memory) {
        return _accounts;
    }

    function isActive(address account) external view returns (bool) {
        return _nodes[account].active;
    }
}
