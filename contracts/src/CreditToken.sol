// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.27;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

import {UsageAnchor} from "./UsageAnchor.sol";

/// @title CreditToken
/// @notice Usage credits between cities. Credits are minted only by settle, and only
/// holders of SETTLER_ROLE move them: a transfer from any other sender reverts. Each
/// settlement names the anchored usage roots it pays for, and each root is paid once.
contract CreditToken is ERC20, AccessControl {
    bytes32 public constant SETTLER_ROLE = keccak256("SETTLER_ROLE");

    UsageAnchor public immutable usageAnchor;

    /// @notice The epoch that paid each root, plus one; 0 means the root is unpaid.
    mapping(bytes32 root => uint256) public paidInEpochPlusOne;

    event Settled(
        uint256 indexed epoch,
        bytes32[] roots,
        address[] recipients,
        uint256[] amounts,
        uint256 total,
        bytes memo
    );

    error InvalidAccount(address account);
    error NoRoots();
    error LengthMismatch(uint256 recipients, uint256 amounts);
    error RootNotAnchored(bytes32 root);
    error RootAlreadyPaid(bytes32 root, uint256 epoch);
    error CreditsNotTransferable(address sender);

    constructor(address admin, UsageAnchor usageAnchor_) ERC20("citymesh credit", "CMC") {
        require(admin != address(0), InvalidAccount(admin));
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        usageAnchor = usageAnchor_;
    }

    /// @notice Mints amounts[i] to recipients[i] for the usage under `roots`. Every root
    /// must be anchored in usageAnchor and not paid before, in this or any earlier call.
    function settle(
        uint256 epoch,
        bytes32[] calldata roots,
        address[] calldata recipients,
        uint256[] calldata amounts,
        bytes calldata memo
    ) external onlyRole(SETTLER_ROLE) {
        require(roots.length > 0, NoRoots());
        require(
            recipients.length == amounts.length,
            LengthMismatch(recipients.length, amounts.length)
        );
        for (uint256 i = 0; i < roots.length; ++i) {
            bytes32 root = roots[i];
            require(usageAnchor.anchoredBy(root) != address(0), RootNotAnchored(root));
            uint256 paid = paidInEpochPlusOne[root];
            // An if, not require: require may evaluate the error's arguments even when
            // the condition holds, and paid - 1 underflows for an unpaid root.
            if (paid != 0) revert RootAlreadyPaid(root, paid - 1);
            paidInEpochPlusOne[root] = epoch + 1;
        }
        uint256 total = 0;
        for (uint256 i = 0; i < recipients.length; ++i) {
            _mint(recipients[i], amounts[i]);
            total += amounts[i];
        }
        emit Settled(epoch, roots, recipients, amounts, total, memo);
    }

    /// @dev Lets mints and burns through and allows transfers only from settlers.
    function _update(address from, address to, uint256 value) internal override {
        if (from != address(0) && to != address(0)) {
            require(hasRole(SETTLER_ROLE, _msgSender()), CreditsNotTransferable(_msgSender()));
        }
        super._update(from, to, value);
    }
}
