// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.27;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title CodeListRegistry
/// @notice The version and SHA-256 digest of the shared classification code list, so two
/// nodes can check that they use the same list. Only DEFAULT_ADMIN_ROLE sets it, and a
/// version string once recorded keeps its digest for good.
contract CodeListRegistry is AccessControl {
    string private _version;
    bytes32 private _digest;
    mapping(bytes32 versionHash => bytes32 digest) private _digestOfVersion;

    event CodeListSet(string version, bytes32 digest);

    error InvalidAccount(address account);
    error EmptyVersion();
    error EmptyDigest();
    error VersionReused(string version, bytes32 recordedDigest);

    constructor(address admin) {
        require(admin != address(0), InvalidAccount(admin));
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    /// @notice Makes (version, digest) the current code list. Setting a recorded version
    /// again is allowed only with the digest it was recorded with.
    function setCodeList(string calldata version, bytes32 digest)
        external
        onlyRole(DEFAULT_ADMIN_ROLE)
    {
        require(bytes(version).length > 0, EmptyVersion());
        require(digest != bytes32(0), EmptyDigest());
        bytes32 versionHash = keccak256(bytes(version));
        bytes32 recorded = _digestOfVersion[versionHash];
        require(recorded == bytes32(0) || recorded == digest, VersionReused(version, recorded));

        _digestOfVersion[versionHash] = digest;
        _version = version;
        _digest = digest;
        emit CodeListSet(version, digest);
    }

    /// @notice Returns the current version and digest; ("", 0) before the first setCodeList.
    function codeList() external view returns (string memory version, bytes32 digest) {
        return (_version, _digest);
    }

    /// @notice Returns the digest recorded for `version`, or 0 if it was never set.
    function digestOf(string calldata version) external view returns (bytes32) {
        return _digestOfVersion[keccak256(bytes(version))];
    }
}
