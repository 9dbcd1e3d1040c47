//! Users' profiles, group roles and threads: the domain the admin dialects share.
//!
//! * A **profile** (name, avatar, gender, mobile, birth, email, ex) per uid; updates
//!   change only the fields given.
//! * **Roles** in a group: one owner, admins, ordinary members. Only subscribers hold a
//!   role; leaving the group drops it; naming a new owner makes the old one ordinary.
//! * **Threads** are sub-channels of a group: a group channel (type 2) of their own,
//!   whose subscribers are the thread's members, always a subset of the group's.
//!   Leaving the group leaves its threads; deleting a thread disbands its channel.
//!
//! All functions here block (storage): call them off the async workers.

use crate::session::is_valid_uid;
use hongyan_store::{ChannelInfo, ChannelKey, MemberList, Role, StoreError, Thread, UserProfile};

use crate::Core;
use crate::channel::GROUP;
use crate::channels::ListChange;

/// Why a directory operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// Storage failed; nothing (or nothing more) was changed.
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// The uid is not a member of the group.
    #[error("{uid} is not a member of {group}")]
    NotMember {
        /// The uid.
        uid: String,
        /// The group.
        group: String,
    },
    /// No such group or thread.
    #[error("{0} not found")]
    NotFound(String),
    /// The id is taken.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// An id breaks the id rule.
    #[error("invalid id: {0}")]
    InvalidId(String),
}

/// A partial profile update: `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct ProfileUpdate {
    /// Display name.
    pub name: Option<String>,
    /// Avatar URL.
    pub avatar: Option<String>,
    /// Gender.
    pub gender: Option<i32>,
    /// Phone number.
    pub mobile: Option<String>,
    /// Birthday.
    pub birth: Option<String>,
    /// E-mail.
    pub email: Option<String>,
    /// Extension data.
    pub ex: Option<String>,
}

fn group_key(group_id: &str) -> ChannelKey {
    ChannelKey::new(group_id, GROUP)
}

impl Core {
    /// `uid`'s profile, if one was ever set.
    pub fn profile(&self, uid: &str) -> Result<Option<UserProfile>, StoreError> {
        self.store().profile(uid)
    }

    /// Applies `update` to `uid`'s profile (creating it), returning the result.
    pub fn update_profile(&self, uid: &str, update: ProfileUpdate) -> Result<UserProfile, DirectoryError> {
        if !is_valid_uid(uid) {
            return Err(DirectoryError::InvalidId(uid.to_owned()));
        }
        let _guard = self.lock_user(uid);
        let mut p = self.store().profile(uid)?.unwrap_or_default();
        let ProfileUpdate { name, avatar, gender, mobile, birth, email, ex } = update;
        p.name = name.unwrap_or(p.name);
        p.avatar = avatar.unwrap_or(p.avatar);
        p.gender = gender.unwrap_or(p.gender);
        p.mobile = mobile.unwrap_or(p.mobile);
        p.birth = birth.unwrap_or(p.birth);
        p.email = email.unwrap_or(p.email);
        p.ex = ex.unwrap_or(p.ex);
        self.store().put_profile(uid, &p)?;
        Ok(p)
    }

    /// Whether `uid` is registered: it has a login token or a profile.
    pub fn is_registered(&self, uid: &str) -> Result<bool, StoreError> {
        Ok(self.store().user_exists(uid)? || self.store().profile(uid)?.is_some())
    }

    /// Unregisters `uid`: its tokens and profile are deleted in one batch (its
    /// messages and memberships stay). Returns whether it was registered. The caller
    /// kicks its connections.
    pub fn unregister(&self, uid: &str) -> Result<bool, StoreError> {
        if !self.is_registered(uid)? {
            return Ok(false);
        }
        let store = self.store();
        let flags = [hongyan_proto::device_flag::APP, hongyan_proto::device_flag::WEB, hongyan_proto::device_flag::PC];
        let mut writes = store.device_removal_writes(uid, &flags);
        writes.push(store.profile_removal_write(uid));
        store.apply(writes)?;
        Ok(true)
    }

    /// The role of `uid` in `group` (`None`: not a member).
    pub fn role(&self, group_id: &str, uid: &str) -> Result<Option<Role>, StoreError> {
        let key = group_key(group_id);
        if !self.channel_state(&key)?.subscribers.contains(uid) {
            return Ok(None);
        }
        let roles = self.store().roles(group_id, GROUP)?;
        Ok(Some(roles.into_iter().find(|(u, _)| u == uid).map_or(Role::Member, |(_, r)| r)))
    }

    /// The owner and admins of `group`, in uid order (everyone else is ordinary).
    pub fn roles(&self, group_id: &str) -> Result<Vec<(String, Role)>, StoreError> {
        self.store().roles(group_id, GROUP)
    }

    /// Gives `uid` `role` in `group`. A new owner makes the previous one ordinary.
    pub fn set_role(&self, group_id: &str, uid: &str, role: Role) -> Result<(), DirectoryError> {
        let key = group_key(group_id);
        if !self.channel_state(&key)?.subscribers.contains(uid) {
            return Err(DirectoryError::NotMember { uid: uid.to_owned(), group: group_id.to_owned() });
        }
        let store = self.store();
        let mut writes = Vec::new();
        if role == Role::Owner {
            for (other, r) in store.roles(group_id, GROUP)? {
                if r == Role::Owner && other != uid {
                    writes.push(store.role_write(group_id, GROUP, &other, Role::Member));
                }
            }
        }
        writes.push(store.role_write(group_id, GROUP, uid, role));
        store.apply(writes)?;
        Ok(())
    }

    /// What leaving a group takes with it beyond the group's own rows: the threads'
    /// memberships. Called after the group's subscribers changed.
    pub(crate) fn after_members_left(&self, group: &ChannelKey, left: &[String]) -> Result<(), StoreError> {
        if group.channel_type != GROUP || left.is_empty() {
            return Ok(());
        }
        for thread in self.store().group_threads(&group.channel_id)? {
            self.change_members(MemberList::Subscribers, &group_key(&thread), left, ListChange::Remove)?;
        }
        Ok(())
    }

    /// Starts a thread in its group with its owner as the first member.
    pub fn create_thread(&self, thread: Thread) -> Result<(), DirectoryError> {
        for id in [&thread.id, &thread.group_id, &thread.owner] {
            if !is_valid_uid(id) {
                return Err(DirectoryError::InvalidId(id.clone()));
            }
        }
        let group = self.channel_state(&group_key(&thread.group_id))?;
        if group.subscribers.is_empty() {
            return Err(DirectoryError::NotFound(format!("group {}", thread.group_id)));
        }
        if !group.subscribers.contains(&thread.owner) {
            return Err(DirectoryError::NotMember { uid: thread.owner.clone(), group: thread.group_id.clone() });
        }
        let channel = group_key(&thread.id);
        let existing = self.channel_state(&channel)?;
        // A deleted thread's id stays taken: its channel is disbanded, its history kept.
        if self.store().thread(&thread.id)?.is_some() || !existing.subscribers.is_empty() || existing.info.disband {
            return Err(DirectoryError::AlreadyExists(format!("channel {}", thread.id)));
        }
        self.change_members(MemberList::Subscribers, &channel, std::slice::from_ref(&thread.owner), ListChange::Add)?;
        // The thread appears last, once its channel is ready.
        self.store().apply(self.store().thread_writes(&thread)?)?;
        Ok(())
    }

    /// Renames thread `id`.
    pub fn rename_thread(&self, id: &str, name: &str) -> Result<Thread, DirectoryError> {
        let mut thread = self.existing_thread(id)?;
        thread.name = name.to_owned();
        self.store().apply(self.store().thread_writes(&thread)?)?;
        Ok(thread)
    }

    /// Every thread, in id order.
    pub fn all_threads(&self) -> Result<Vec<Thread>, StoreError> {
        self.store().all_threads()
    }

    /// The threads `uid` is a member of, with when it joined (ms), in id order.
    pub fn threads_of(&self, uid: &str, group_id: Option<&str>) -> Result<Vec<(Thread, i64)>, StoreError> {
        let threads = match group_id {
            Some(group) => self.group_threads(group)?,
            None => self.all_threads()?,
        };
        let mut joined = Vec::new();
        for thread in threads {
            if !self.channel_state(&group_key(&thread.id))?.subscribers.contains(uid) {
                continue;
            }
            let entries = self.store().member_entries(MemberList::Subscribers, &thread.id, GROUP)?;
            let at = entries.iter().find(|(u, _)| u == uid).map_or(thread.created_ms, |(_, at)| *at);
            joined.push((thread, at));
        }
        Ok(joined)
    }

    /// The thread `id`.
    pub fn thread(&self, id: &str) -> Result<Option<Thread>, StoreError> {
        self.store().thread(id)
    }

    /// The threads of a group, in id order.
    pub fn group_threads(&self, group_id: &str) -> Result<Vec<Thread>, StoreError> {
        let ids = self.store().group_threads(group_id)?;
        ids.iter().filter_map(|id| self.store().thread(id).transpose()).collect()
    }

    /// The members of thread `id`, in uid order.
    pub fn thread_members(&self, id: &str) -> Result<Vec<String>, DirectoryError> {
        self.existing_thread(id)?;
        let mut members: Vec<String> = self.channel_state(&group_key(id))?.subscribers.iter().cloned().collect();
        members.sort_unstable();
        Ok(members)
    }

    /// The thread `id`, or [`DirectoryError::NotFound`].
    pub fn existing_thread(&self, id: &str) -> Result<Thread, DirectoryError> {
        self.store().thread(id)?.ok_or_else(|| DirectoryError::NotFound(format!("thread {id}")))
    }

    /// Adds members to thread `id`; every one must be a member of its group (else
    /// nobody is added).
    pub fn add_thread_members(&self, id: &str, uids: &[String]) -> Result<(), DirectoryError> {
        let thread = self.existing_thread(id)?;
        let group = self.channel_state(&group_key(&thread.group_id))?;
        if let Some(outsider) = uids.iter().find(|u| !group.subscribers.contains(*u)) {
            return Err(DirectoryError::NotMember { uid: outsider.clone(), group: thread.group_id });
        }
        self.change_members(MemberList::Subscribers, &group_key(id), uids, ListChange::Add)?;
        Ok(())
    }

    /// Removes members from thread `id`.
    pub fn remove_thread_members(&self, id: &str, uids: &[String]) -> Result<(), DirectoryError> {
        self.existing_thread(id)?;
        self.change_members(MemberList::Subscribers, &group_key(id), uids, ListChange::Remove)?;
        Ok(())
    }

    /// Deletes thread `id`: it leaves its group's list and its channel is disbanded
    /// (sends get 24), its history kept.
    pub fn delete_thread(&self, id: &str) -> Result<(), DirectoryError> {
        let thread = self.existing_thread(id)?;
        let channel = group_key(id);
        self.set_channel_info(&channel, ChannelInfo { disband: true, ..ChannelInfo::default() })?;
        self.store().apply(self.store().thread_removal(&thread))?;
        self.change_members(MemberList::Subscribers, &channel, &[], ListChange::Set)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn thread(id: &str, group: &str, owner: &str) -> Thread {
        Thread {
            id: id.into(),
            group_id: group.into(),
            name: format!("{id} talk"),
            owner: owner.into(),
            message_id: "1".into(),
            created_ms: 1,
            tenant: String::new(),
        }
    }

    #[tokio::test]
    async fn profiles_update_only_the_fields_given() {
        let core = crate::test_core();
        assert_eq!(core.profile("ann").unwrap(), None);
        let first = ProfileUpdate { name: Some("Ann".into()), gender: Some(2), ..ProfileUpdate::default() };
        core.update_profile("ann", first).unwrap();
        let second = ProfileUpdate { email: Some("ann@example.com".into()), ..ProfileUpdate::default() };
        let p = core.update_profile("ann", second).unwrap();
        assert_eq!((p.name.as_str(), p.gender, p.email.as_str()), ("Ann", 2, "ann@example.com"));
        assert_eq!(core.profile("ann").unwrap(), Some(p));
        assert!(matches!(core.update_profile("a@b", ProfileUpdate::default()), Err(DirectoryError::InvalidId(_))));
    }

    #[tokio::test]
    async fn one_owner_and_roles_leave_with_the_member() {
        let core = crate::test_core();
        let g = group_key("g");
        core.change_members(MemberList::Subscribers, &g, &names(&["a", "b", "c"]), ListChange::Add).unwrap();
        core.set_role("g", "a", Role::Owner).unwrap();
        core.set_role("g", "b", Role::Admin).unwrap();
        assert!(matches!(core.set_role("g", "zed", Role::Admin), Err(DirectoryError::NotMember { .. })));
        assert_eq!(core.role("g", "c").unwrap(), Some(Role::Member));
        assert_eq!(core.role("g", "zed").unwrap(), None);
        core.set_role("g", "c", Role::Owner).unwrap();
        assert_eq!(core.roles("g").unwrap(), [("b".into(), Role::Admin), ("c".into(), Role::Owner)]);
        core.change_members(MemberList::Subscribers, &g, &names(&["b"]), ListChange::Remove).unwrap();
        assert_eq!(core.roles("g").unwrap(), [("c".into(), Role::Owner)]);
        // A reset that drops the owner drops the role too.
        core.change_members(MemberList::Subscribers, &g, &names(&["a"]), ListChange::Set).unwrap();
        assert!(core.roles("g").unwrap().is_empty());
    }

    #[tokio::test]
    async fn threads_are_sub_channels_of_their_group() {
        let core = crate::test_core();
        let g = group_key("g");
        core.change_members(MemberList::Subscribers, &g, &names(&["a", "b", "c"]), ListChange::Add).unwrap();
        assert!(matches!(core.create_thread(thread("t", "nope", "a")), Err(DirectoryError::NotFound(_))));
        assert!(matches!(core.create_thread(thread("t", "g", "zed")), Err(DirectoryError::NotMember { .. })));
        assert!(matches!(core.create_thread(thread("g", "g", "a")), Err(DirectoryError::AlreadyExists(_))));
        core.create_thread(thread("t", "g", "a")).unwrap();
        assert!(matches!(core.create_thread(thread("t", "g", "a")), Err(DirectoryError::AlreadyExists(_))));
        assert_eq!(core.thread_members("t").unwrap(), ["a"]);
        assert_eq!(core.group_threads("g").unwrap(), [thread("t", "g", "a")]);
        assert_eq!(core.rename_thread("t", "renamed").unwrap().name, "renamed");
        assert_eq!(core.thread("t").unwrap().unwrap().name, "renamed");
        assert_eq!(core.threads_of("a", None).unwrap().len(), 1);
        assert!(core.threads_of("b", Some("g")).unwrap().is_empty());
        core.rename_thread("t", "t talk").unwrap();

        // Members come from the group only, all or none.
        let err = core.add_thread_members("t", &names(&["b", "zed"])).unwrap_err();
        assert!(matches!(err, DirectoryError::NotMember { ref uid, .. } if uid == "zed"));
        assert_eq!(core.thread_members("t").unwrap(), ["a"]);
        core.add_thread_members("t", &names(&["b", "c"])).unwrap();
        assert_eq!(core.thread_members("t").unwrap(), ["a", "b", "c"]);
        core.remove_thread_members("t", &names(&["c"])).unwrap();
        assert_eq!(core.thread_members("t").unwrap(), ["a", "b"]);
        // Leaving the group leaves its threads.
        core.change_members(MemberList::Subscribers, &g, &names(&["b"]), ListChange::Remove).unwrap();
        assert_eq!(core.thread_members("t").unwrap(), ["a"]);

        // Deleted: gone from the group, its channel disbanded, its id not reusable.
        core.delete_thread("t").unwrap();
        assert!(core.group_threads("g").unwrap().is_empty());
        assert!(matches!(core.thread_members("t"), Err(DirectoryError::NotFound(_))));
        assert!(core.channel_state(&group_key("t")).unwrap().info.disband);
        assert!(matches!(core.create_thread(thread("t", "g", "a")), Err(DirectoryError::AlreadyExists(_))));
    }
}
